"""Looking inside a trained network (d2l 6.6's last exercise).

For a run directory: the activations of the first and second convolutional layers for chosen
test images (by default a pullover and a coat, side by side), the learned first-layer kernels,
and a grid of misclassified test images with their true and predicted labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cnnlab import runlock
from cnnlab.data.loader import to_float
from cnnlab.errors import ConfigError
from cnnlab.fileio import check_writable_dir, save_figure
from cnnlab.inference import predict_logits
from cnnlab.models.blocks import ACTIVATIONS
from cnnlab.trained import TrainedRun
from cnnlab.viz import use_cjk_fonts

DEFAULT_CLASSES = ("pullover", "coat")
"""The exercise's pair for Fashion-MNIST: two classes the network confuses."""

MAX_MISCLASSIFIED = 100
"""Most images the mistakes grid draws (100 take matplotlib ~3 s; thousands would take minutes)."""


def conv_activation_layers(model: nn.Module, count: int = 2) -> list[nn.Module]:
    """The modules whose outputs are the first ``count`` conv layers' activations: the activation
    after each conv (past its batch norm) when the model is a plain Sequential, else the conv itself."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else []
    found = []
    if modules:
        for i, module in enumerate(modules):
            if isinstance(module, nn.Conv2d):
                j = i + 1
                while j < len(modules) and isinstance(modules[j], (nn.BatchNorm2d,)):
                    j += 1
                act_types = tuple(ACTIVATIONS.values())
                found.append(modules[j] if j < len(modules) and isinstance(modules[j], act_types) else module)
    if len(found) < count:
        found = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise ConfigError("the model has no convolutional layer to inspect")
    return found[:count]


@torch.no_grad()
def layer_activations(model: nn.Module, x: torch.Tensor, count: int = 2) -> list[torch.Tensor]:
    """Outputs (B, C, H, W) of the first ``count`` conv layers (after their activation) for batch ``x``."""
    layers = conv_activation_layers(model, count)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: outputs.setdefault(k, o.detach()))
             for k, layer in enumerate(layers)]
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return [outputs[k] for k in range(len(layers))]


def pick_examples(labels: torch.Tensor, classes: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Index of the first test image of each wanted class (by name or class number)."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    picked = []
    for name in wanted:
        key = str(name).lower()
        cls = lookup.get(key, int(key) if key.isdigit() else None)
        if cls is None or not 0 <= cls < len(classes):
            raise ConfigError(f"no class {name!r}; classes are: {', '.join(classes)}")
        hits = (labels == cls).nonzero().flatten()
        if hits.numel() == 0:
            raise ConfigError(f"the test set has no image of class {name!r}")
        picked.append(int(hits[0]))
    return picked


def activations_figure(images: torch.Tensor, titles: Sequence[str], acts: Sequence[torch.Tensor],
                       max_channels: int = 16):
    """Columns: one per chosen image; rows: the image, then each layer's channels as a tiled grid."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    n = images.shape[0]
    fig, axes = plt.subplots(1 + len(acts), n, figsize=(3.2 * n, 3.0 * (1 + len(acts))), squeeze=False)
    for col in range(n):
        axes[0][col].imshow(images[col, 0].cpu().numpy(), cmap="gray")
        axes[0][col].set_title(titles[col])
        for row, act in enumerate(acts, start=1):
            maps = act[col, :max_channels].cpu()
            per_row = int(torch.ceil(torch.sqrt(torch.tensor(float(maps.shape[0])))).item())
            axes[row][col].imshow(_tile(maps, per_row).numpy(), cmap="viridis")
            axes[row][col].set_title(f"layer {row}: {act.shape[1]} channels, {act.shape[2]}x{act.shape[3]}",
                                     fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _tile(maps: torch.Tensor, per_row: int, gap: int = 1) -> torch.Tensor:
    """Maps (C, H, W), each scaled to [0, 1], tiled ``per_row`` across with a ``gap`` of NaN (blank)."""
    c, h, w = maps.shape
    rows = -(-c // per_row)
    out = torch.full((rows * (h + gap) - gap, per_row * (w + gap) - gap), float("nan"))
    for k in range(c):
        m = maps[k]
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        r, q = divmod(k, per_row)
        out[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = m
    return out


def kernels_figure(conv: nn.Conv2d):
    """The first conv layer's kernels (first input channel), one small image per output channel."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    weights = conv.weight.detach().cpu()[:, 0]
    n = weights.shape[0]
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows), squeeze=False)
    limit = float(weights.abs().max())
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(weights[k].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(str(k), fontsize=7)
    fig.suptitle(f"first-layer kernels ({conv.kernel_size[0]}x{conv.kernel_size[1]}; red +, blue -)", fontsize=9)
    fig.tight_layout()
    return fig


def misclassified_figure(images: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, classes: Sequence[str],
                         limit: int = 25):
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    use_cjk_fonts()
    n = min(limit, images.shape[0])
    cols = min(max(n, 1), 5)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k, 0].cpu().numpy(), cmap="gray")
            ax.set_title(f"true {classes[int(true[k])]}\npred {classes[int(pred[k])]}", fontsize=7)
    fig.suptitle(f"{n} misclassified test images", fontsize=9)
    fig.tight_layout()
    return fig


def inspect_run(run_dir: str | Path, out_dir: str | Path | None = None, *, classes: Sequence[str] | None = None,
                data_dir: str | None = None, verify: bool | None = None, test_limit: int | None = None, max_misclassified: int = 25
                ) -> dict[str, Path]:
    """Write activations.png, kernels.png and misclassified.png for the run's checkpoint; returns their paths."""
    if test_limit is not None and test_limit < 1:
        raise ConfigError(f"--test-limit must be a positive number of test images, got {test_limit}")
    if not 0 <= max_misclassified <= MAX_MISCLASSIFIED:
        raise ConfigError(f"--max-misclassified must be between 0 and {MAX_MISCLASSIFIED} (images in the "
                          f"mistakes grid), got {max_misclassified}")
    run = TrainedRun.open(run_dir, "the run to inspect")
    # beside the checkpoint, also when RUN_DIR names the checkpoint file itself
    out_dir = Path(out_dir) if out_dir is not None else run.folder / "inspect"
    with runlock.hold_if_inside(out_dir, run.folder, fix="wait for it to finish, or write elsewhere with --out-dir"):
        created = not out_dir.exists()
        check_writable_dir(out_dir)  # fail on an unwritable folder before the work, not after it
        try:
            return _inspect(run, out_dir, classes, data_dir, verify, test_limit, max_misclassified)
        except BaseException:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()   # a failed inspect leaves no empty folder behind
            raise


def _inspect(run, out_dir: Path, classes, data_dir, verify, test_limit, max_misclassified) -> dict[str, Path]:
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    model = run.build_model()
    class_names = list(run.classes)
    images_u8, labels = run.load_split(run.scoring_split, data_dir, verify)
    if test_limit:
        images_u8, labels = images_u8[:test_limit], labels[:test_limit]
    size = run.input_size
    wanted = list(classes) if classes else (
        list(DEFAULT_CLASSES) if all(c in class_names for c in DEFAULT_CLASSES) else class_names[:2])
    picked = pick_examples(labels, class_names, wanted)
    x = to_float(images_u8[picked], resize=size, normalize=run.normalize)
    acts = layer_activations(model, x, count=2)
    paths = {"activations": out_dir / "activations.png", "kernels": out_dir / "kernels.png",
             "misclassified": out_dir / "misclassified.png"}
    titles = [f"#{i}: {class_names[int(labels[i])]}" for i in picked]
    for key, fig in (("activations", activations_figure(x, titles, acts)),
                     ("kernels", kernels_figure(next(m for m in model.modules() if isinstance(m, nn.Conv2d))))):
        save_figure(paths[key], fig, dpi=110)
        plt.close(fig)
    logits = predict_logits(model, images_u8, input_size=size, normalize=run.normalize)
    pred = logits.argmax(dim=1)
    wrong = (pred != labels).nonzero().flatten()[:max_misclassified]
    fig = misclassified_figure(to_float(images_u8[wrong]), labels[wrong], pred[wrong], class_names,
                               limit=max_misclassified)
    save_figure(paths["misclassified"], fig, dpi=110)
    plt.close(fig)
    return paths
