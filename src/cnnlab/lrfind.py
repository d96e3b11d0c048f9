"""The learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train from the run's initial weights while the rate grows exponentially from ``start_lr`` to
``end_lr`` over ``num_steps`` batches, recording the smoothed loss; stop once it explodes.  A
good rate is where the loss falls fastest (the steepest point of the curve), somewhat below
the rate at the minimum loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnlab.device import resolve_device
from cnnlab.errors import ConfigError
from cnnlab.fileio import ensure_dir, save_figure, write_text
from cnnlab.train.config import TrainConfig
from cnnlab.train.run import build_trainer
from cnnlab.viz import use_cjk_fonts


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]          # exponentially smoothed, bias-corrected (as fastai)
    steepest_lr: float           # where the smoothed loss falls fastest per log-rate
    min_loss_lr: float           # where the smoothed loss is lowest

    def plot(self):
        import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

        use_cjk_fonts()
        fig, ax = plt.subplots(figsize=(5.0, 3.5))
        ax.plot(self.lrs, self.losses, color="C0")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        for lr, label, color in ((self.steepest_lr, "steepest", "C3"), (self.min_loss_lr, "min loss", "C1")):
            ax.axvline(lr, color=color, linestyle="--", label=f"{label}: {lr:.2g}")
        ax.grid(True, alpha=0.4)
        ax.legend()
        fig.tight_layout()
        return fig


def lr_range_test(config: TrainConfig, *, start_lr: float = 1e-5, end_lr: float = 10.0, num_steps: int = 100,
                  smoothing: float = 0.98, diverge: float = 4.0, device: torch.device | None = None) -> LRFindResult:
    """Run the range test with ``config``'s model, data, optimizer, loss and training step (the one the
    run would train with: its precision, layout or kernel); the schedule is ignored."""
    if not 0 < start_lr < end_lr < math.inf:
        raise ConfigError(f"lr-find needs 0 < --start-lr < --end-lr, both finite, got {start_lr:g} and {end_lr:g}")
    if num_steps < 5:
        raise ConfigError(f"lr-find needs at least 5 steps, got {num_steps}")
    config = replace(config, lr=start_lr, schedule="constant", warmup_epochs=0.0).validate()
    device = device or resolve_device(config.device)
    # The rate changes every step here, so the step must not bake it in (a whole-step CUDA graph would).
    trainer = build_trainer(config, device, fixed_rate=False)
    step_fn, optimizer = trainer.step, trainer.step.optimizer
    trainer.model.train()
    factor = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    step, epoch = 0, 0
    while step < num_steps:
        for X, y in trainer.train_batches.batches(epoch):
            if step >= num_steps:
                break
            lr = start_lr * factor ** step
            for group in optimizer.param_groups:
                group["lr"] = lr
            if trainer.augment is not None:
                X = trainer.augment(X, epoch, step)
            loss_sum, _ = step_fn(X, y)
            value = float(loss_sum) / y.shape[0]  # one sync per step is fine for a 100-step test
            if not math.isfinite(value):
                break
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            step += 1
            if smoothed > diverge * best:
                break
        else:
            epoch += 1
            continue
        break
    if len(lrs) < 3:
        raise ConfigError(f"the loss diverged within {len(lrs)} steps of lr-find; lower --start-lr")
    # Steepest descent of the smoothed loss against log(lr); skip the first steps, whose average is noisy.
    skip = min(len(lrs) // 10, 10)
    slopes = [(losses[i + 1] - losses[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(skip, len(lrs) - 1)]
    steepest = lrs[skip + min(range(len(slopes)), key=slopes.__getitem__)]
    min_loss = lrs[min(range(len(losses)), key=losses.__getitem__)]
    return LRFindResult(lrs, losses, steepest, min_loss)


def write_lr_find(result: LRFindResult, out_dir: str | Path) -> None:
    """``lr_find.csv`` (lr, smoothed loss) and ``lr_find.png`` in ``out_dir``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    out_dir = ensure_dir(out_dir)
    write_text(out_dir / "lr_find.csv", "lr,loss\n" + "".join(f"{lr:.6g},{loss:.6g}\n"
                                                            for lr, loss in zip(result.lrs, result.losses)))
    fig = result.plot()
    save_figure(out_dir / "lr_find.png", fig, dpi=120)
    plt.close(fig)
