"""Using a trained model: test-set evaluation (per-class accuracy, confusion matrix) and
prediction on people's own image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from cnnlab.data.loader import to_float
from cnnlab.errors import ConfigError
from cnnlab.images import read_image
from cnnlab.text import display_width, pad
from cnnlab.train.config import TTA_CHOICES


def check_tta(tta: str) -> None:
    if tta not in TTA_CHOICES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_CHOICES)}")


def shifted(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """``x`` (..., H, W) moved ``pixels`` right and down (left and up when negative), zeros coming in."""
    h, w = x.shape[-2:]
    n = abs(pixels)
    padded = torch.nn.functional.pad(x, (n, n, n, n))
    start = n - pixels
    return padded[..., start:start + h, start:start + w]


def tta_forward(forward, tta: str):
    """``forward`` with test-time augmentation ``tta`` (see TTA_CHOICES), returning summed logits.

    flip: logits(x) + logits(mirror of x).  flip-shift: that pair plus, at half weight, the pair
    moved one pixel up-left and the pair moved one pixel down-right (six views; the training crops
    move images by up to ``crop_padding`` pixels, so the network has seen such shifts)."""
    check_tta(tta)
    if tta == "none":
        return forward

    @torch.inference_mode()
    def augmented(x):
        return tta_logits(forward, x, tta)
    return augmented


def tta_logits(forward, x: torch.Tensor, tta: str) -> torch.Tensor:
    """The summed logits of tta_forward, without its inference mode (an exported network traces this)."""
    if tta == "none":
        return forward(x)
    views = (x, x.flip(-1))
    logits = sum(forward(v) for v in views)
    if tta == "flip-shift":
        logits = logits + 0.5 * sum(forward(shifted(v, s)) for v in views for s in (-1, 1))
    return logits


def run_tta(config: dict) -> str:
    """The test-time augmentation a run's saved config asks for (runs before --tta said --tta-flip)."""
    return config.get("tta") or ("flip" if config.get("tta_flip") else "none")


def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1024,
                   input_size: int | None = None, device: torch.device | None = None,
                   tta: str = "none", normalize=None) -> torch.Tensor:
    """Logits for uint8 images (N, C, H, W), computed in batches on ``device``; returned on the CPU.
    ``normalize`` is the run's per-channel (mean, std), for runs on their own data (checkpoint ``normalize``).
    ``tta`` is the test-time augmentation (tta_forward), as the run that trained the model scored itself.

    Runs in inference mode, with the model in eval mode (restored afterwards): no autograd graph is
    kept per batch (it held every activation of the whole test set: GoogLeNet's evaluation ran out of
    memory)."""
    forward = tta_forward(model, tta)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = to_float(images[start:start + batch_size].to(device), resize=input_size, normalize=normalize)
                out.append(forward(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def confusion_matrix(predicted: torch.Tensor, actual: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    flat = actual.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Each class's accuracy from a :func:`confusion_matrix`: its diagonal count over its row's total
    (0 for a class without images)."""
    support = confusion.sum(dim=1).clamp(min=1)
    return (confusion.diagonal().double() / support.double()).tolist()


@dataclass
class Evaluation:
    accuracy: float
    per_class: list[float]
    confusion: torch.Tensor
    classes: list[str]
    predicted: torch.Tensor
    """The predicted class of each image, in the order given."""

    def table(self) -> str:
        width = max(display_width(c) for c in [*self.classes, "class", "all"])
        support = self.confusion.sum(dim=1).tolist()
        rows = [(name, self.per_class[i], int(self.confusion[i, i]), int(support[i]))
                for i, name in enumerate(self.classes)]
        rows.append(("all", self.accuracy, int(self.confusion.trace()), int(self.confusion.sum())))
        lines = [f"{pad('class', width)}  accuracy  correct / total"]
        lines += [f"{pad(name, width)}  {acc:8.3f}  {correct:>7} / {total}" for name, acc, correct, total in rows]
        return "\n".join(lines)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *,
             input_size: int | None = None, batch_size: int = 1024,
             device: torch.device | None = None, tta: str = "none", normalize=None) -> Evaluation:
    logits = predict_logits(model, images, batch_size=batch_size, input_size=input_size, device=device, tta=tta,
                            normalize=normalize)
    predicted = logits.argmax(dim=1)
    cm = confusion_matrix(predicted, labels.cpu(), len(classes))
    return Evaluation(float((predicted == labels.cpu()).double().mean()), per_class_accuracy(cm), cm, list(classes),
                      predicted)


def load_image(path: str | Path, invert: str = "auto", size: int = 28) -> tuple[torch.Tensor, bool]:
    """An image file of any size and colour as a uint8 tensor (1, size, size), light object on dark.

    The picture is converted to 8-bit grayscale (:mod:`cnnlab.images`: deep images are scaled, not
    clipped), then fitted as :func:`fit_image` says.  Returns the tensor and whether it was inverted.
    """
    check_invert(invert)
    return fit_image(read_image(path, channels=1), invert, size)


def check_invert(invert: str) -> None:
    if invert not in ("auto", "yes", "no"):
        raise ConfigError(f"invert must be auto, yes or no, not {invert!r}")


def fit_image(gray, invert: str = "auto", size: int = 28) -> tuple[torch.Tensor, bool]:
    """An 8-bit grayscale ``PIL.Image`` as the network's input: a uint8 tensor (1, size, size), light
    object on dark.

    The picture is fitted inside a ``size`` square (aspect kept, padded with its own background
    colour) and, when it has a light background (judged from its border pixels) or ``invert="yes"``,
    inverted, because MNIST-like datasets draw light objects on black.  Returns the tensor and
    whether it was inverted.
    """
    check_invert(invert)
    arr = np.asarray(gray)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    background = int(np.median(border))
    inverted = invert == "yes" or (invert == "auto" and background > 127)
    gray = gray.copy()
    gray.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (size, size), color=background)
    canvas.paste(gray, ((size - gray.width) // 2, (size - gray.height) // 2))
    if inverted:
        canvas = ImageOps.invert(canvas)
    return torch.from_numpy(np.array(canvas, dtype=np.uint8)).unsqueeze(0), inverted


def top_k(logits: torch.Tensor, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """For each row of logits, the ``k`` most probable classes with their softmax probabilities."""
    probs = torch.softmax(logits.float(), dim=1)
    k = min(k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [[(classes[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
