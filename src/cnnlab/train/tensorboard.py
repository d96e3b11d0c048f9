"""TensorBoard event files for a run (``cnnlab train --tensorboard``): a callback, like the run's CSV and PNG.

Everything is logged against one step axis, the number of training batches done, so curve points,
per-epoch images and histograms line up and a resumed run continues the same axis.  A resumed run
opens a new event file with ``purge_step`` at the batch it resumes from: TensorBoard's readers drop
whatever an interrupted process had logged past its checkpoint, so no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.extras import require
from cnnlab.fileio import probe_writable
from cnnlab.inference import confusion_matrix, per_class_accuracy
from cnnlab.train.callbacks import Callback
from cnnlab.viz import plot_confusion

MISCLASSIFIED_SHOWN = 64
"""Misclassified test images in each epoch's grid (the first ones in test-set order)."""


def require_tensorboard() -> None:
    require(["tensorboard"], "tensorboard", "--tensorboard")


def log_dir(run_dir: str | Path) -> Path:
    """Where a run's event files go."""
    return Path(run_dir) / "tb"


def check_log_dir(run_dir: str | Path) -> None:
    """Fail in one line, before anything of the run is written, where the run's ``tb`` cannot hold event
    files: a file, a broken link, or a folder no file can be made in (a link into the kernel's own
    files).  A ``tb`` not there yet is made when training starts, as the run directory is."""
    folder = log_dir(run_dir)
    if not os.path.lexists(folder):
        return
    fix = "move it away or train without --tensorboard"
    if not folder.is_dir():
        what = "a link to nothing" if not folder.exists() else "not a folder"
        raise ConfigError(f"TensorBoard's folder {folder} is {what}; {fix}")
    try:
        probe_writable(folder)
    except OSError as exc:
        raise ConfigError(f"TensorBoard's folder {folder} cannot take event files ({exc.strerror or exc}); "
                          f"{fix}") from exc


def image_grid(images: torch.Tensor, ncols: int = 8, pad: int = 1) -> torch.Tensor:
    """Images (N, C, H, W) with values in [0, 1] tiled into one (C, rows*(H+pad)+pad, ncols*(W+pad)+pad)
    image on a white background."""
    n, c, h, w = images.shape
    ncols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / ncols))
    grid = torch.ones(c, rows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i].float().cpu()
    return grid


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def kernel_grid(conv: nn.Conv2d, scale: int = 4) -> torch.Tensor:
    """The first layer's kernels as one grey image: each (input channel of each) kernel scaled to [0, 1]
    on its own and enlarged ``scale`` times."""
    weight = conv.weight.detach().float().cpu()
    kernels = weight.reshape(-1, 1, *weight.shape[-2:])
    low = kernels.amin(dim=(1, 2, 3), keepdim=True)
    span = (kernels.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    kernels = ((kernels - low) / span).repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return image_grid(kernels, ncols=min(16, kernels.shape[0]))


def hparam_value(value: Any) -> bool | int | float | str:
    """A setting as TensorBoard's HParams tab takes it: numbers, booleans and text (lists as JSON)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else json.dumps(value, sort_keys=True)


class TensorBoardLogger(Callback):
    """Writes ``run_dir/tb/``: curve points and learning rate at every point; at every epoch's end the
    test accuracy, examples/sec (training examples over training seconds so far, as summary.json counts
    them), per-class test accuracy, the confusion matrix and a grid of misclassified test images,
    first-layer kernels, and weight and gradient histograms; at the end the settings and final metrics
    as hparams.  Add it on rank 0 only: per-class numbers cover the test images that process scores.
    The class names are the trainer's run's (``trainer.run.classes``), known once its data is read."""

    def __init__(self, run_dir: str | Path, settings: dict[str, Any]):
        require_tensorboard()
        self.log_dir = log_dir(run_dir)
        self.settings = dict(settings)
        self.classes: list[str] = []
        self.writer = None

    def global_step(self, trainer, epoch: int, step: int) -> int:
        """Batches done after batch ``step`` (0-based) of ``epoch``."""
        return epoch * trainer.steps_per_epoch + step + 1

    def on_fit_start(self, trainer):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  optional extra (cnnlab[tensorboard])

        self.classes = trainer.run.classes
        done = trainer.state.epoch * trainer.steps_per_epoch + trainer.state.step
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=done + 1)
        self.trained = False

    def _lr(self, trainer) -> float:
        return float(trainer.optimizer.param_groups[0]["lr"])

    def on_point(self, trainer, point):
        step = round(point["epoch"] * trainer.steps_per_epoch)
        self.writer.add_scalar("train/loss", point["train_loss"], step)
        self.writer.add_scalar("train/acc", point["train_acc"], step)
        self.writer.add_scalar("train/lr", self._lr(trainer), step)

    def on_epoch_start(self, trainer, epoch):
        self.predicted, self.labels, self.wrong = [], [], []

    def on_held_out_batch(self, trainer, X, y, logits):
        """Keeps the predictions and the first misclassified images of the pass that scores the epoch."""
        p = logits.argmax(dim=1)
        self.predicted.append(p.cpu())
        self.labels.append(y.cpu())
        if sum(len(w) for w in self.wrong) < MISCLASSIFIED_SHOWN:
            self.wrong.append(X[p != y].float().cpu())

    def on_epoch_end(self, trainer, epoch, record):
        w = self.writer
        self.trained = True
        step = (epoch + 1) * trainer.steps_per_epoch
        held = trainer.held_out_name   # "val" with a validation split, else "test": what each epoch measures
        w.add_scalar(f"{held}/acc", record[f"{held}_acc"], step)
        w.add_scalar("train/epoch_loss", record["train_loss"], step)
        w.add_scalar("train/epoch_acc", record["train_acc"], step)
        if trainer.state.train_seconds:
            w.add_scalar("speed/examples_per_sec", trainer.state.examples_seen / trainer.state.train_seconds, step)
        wrong = torch.cat(self.wrong)[:MISCLASSIFIED_SHOWN] if self.wrong else torch.zeros(0)
        cm = confusion_matrix(torch.cat(self.predicted), torch.cat(self.labels), len(self.classes))
        for name, acc in zip(self.classes, per_class_accuracy(cm)):
            w.add_scalar(f"{held}_per_class/{name}", acc, step)
        w.add_figure(f"{held}/confusion_matrix",
                     plot_confusion(cm.numpy(), self.classes, title=f"epoch {epoch + 1}: {held} acc "
                                                                    f"{record[f'{held}_acc']:.3f}"), step)
        if len(wrong):
            w.add_image(f"{held}/misclassified", image_grid(wrong.clamp(0, 1)), step)
        model = getattr(trainer.model, "module", trainer.model)
        conv = first_conv(model)
        if conv is not None:
            w.add_image("weights/first_layer_kernels", kernel_grid(conv), step)
        for name, param in model.named_parameters():
            w.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            if param.grad is not None:
                w.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), step)
        w.flush()

    def _close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_interrupt(self, trainer):
        self._close()

    def on_fit_end(self, trainer, result):
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415  optional extra (cnnlab[tensorboard])

        if not self.trained:   # resumed when already complete: the hparams were written when it finished
            self._close()
            return
        held = trainer.held_out_name
        measured = [p[f"{held}_acc"] for p in trainer.state.history if p.get(f"{held}_acc") is not None]
        metrics = {"hparam/test_acc": result["test_acc"], f"hparam/{held}_acc": result[f"{held}_acc"],
                   f"hparam/best_{held}_acc": max(measured, default=float("nan")),
                   "hparam/train_loss": result["train_loss"], "hparam/train_acc": result["train_acc"],
                   "hparam/examples_per_sec": result["examples_per_sec"]}
        metrics = {tag: value for tag, value in metrics.items() if value is not None}   # data without a test split
        exp, ssi, sei = hparams({k: hparam_value(v) for k, v in sorted(self.settings.items())}, metrics)
        writer = self.writer.file_writer
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        step = trainer.epochs * trainer.steps_per_epoch
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self._close()
