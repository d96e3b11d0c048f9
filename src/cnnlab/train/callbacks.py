"""Hooks the engine calls at fixed points of training.  Progress, logs, plots and checkpoints are
callbacks, so the training loop itself stays the book's loop and nothing else."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from cnnlab.errors import ConfigError
from cnnlab.fileio import save_figure, write_json, write_text
from cnnlab.portable import FileInUseError
from cnnlab.train.config import MAX_EPOCHS
from cnnlab.viz import plot_curves

if TYPE_CHECKING:
    import torch

    from cnnlab.train.engine import Trainer


class Callback:
    """Override any of these; every hook gets the trainer, whose ``state`` holds the run so far."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_step_end(self, trainer: "Trainer", epoch: int, step: int) -> None: ...
    def on_point(self, trainer: "Trainer", point: dict[str, Any]) -> None: ...
    def on_held_out_batch(self, trainer: "Trainer", X: torch.Tensor, y: torch.Tensor,
                          logits: torch.Tensor) -> None:
        """A batch of the epoch's held-out split (validation, else test) as it is scored, on the device."""
    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: "Trainer", result: dict[str, Any]) -> None: ...
    def on_interrupt(self, trainer: "Trainer") -> None: ...


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr with the running loss and accuracy, updated 20 times an epoch.

    ``show=False`` draws nothing but still asks for the running metrics at the same steps: in a
    distributed run those are an all-reduce, which every process must join, and only rank 0 shows."""

    REFRESHES_PER_EPOCH = 20

    def __init__(self, show: bool = True):
        self.show = show
        self.bar = None

    def on_epoch_start(self, trainer, epoch):
        self.bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch + 1}/{trainer.epochs}",
                        unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True,
                        initial=trainer.state.step, disable=not self.show)
        self.every = max(1, trainer.steps_per_epoch // self.REFRESHES_PER_EPOCH)

    def on_step_end(self, trainer, epoch, step):
        if self.bar is None:
            return
        self.bar.update(1)
        if (step + 1) % self.every == 0:
            loss, acc = trainer.running_metrics()
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", refresh=False)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, trainer, epoch, record):
        self._close()

    def on_interrupt(self, trainer):
        self._close()

    def on_fit_end(self, trainer, result):
        self._close()


class EpochPrinter(Callback):
    """One line per epoch, and the book's two closing lines."""

    def __init__(self, out: TextIO | None = None):
        self.out = out

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def on_fit_start(self, trainer):
        if trainer.state.epoch == 0 and trainer.state.step == 0:
            self._print(f"training on {trainer.device}")
        else:
            self._print(f"resuming on {trainer.device} at epoch {trainer.state.epoch + 1}, "
                        f"batch {trainer.state.step + 1}")

    def on_epoch_end(self, trainer, epoch, record):
        name = trainer.held_out_name
        self._print(f"epoch {epoch + 1:>{len(str(trainer.epochs))}}/{trainer.epochs}: "
                    f"train loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}, "
                    f"{name} acc {record[f'{name}_acc']:.3f} ({record['epoch_seconds']:.1f}s)")

    def on_fit_end(self, trainer, result):
        held = [f"{name} acc {result[f'{name}_acc']:.3f}" for name in ("val", "test")
                if result.get(f"{name}_acc") is not None]
        self._print(", ".join([f"loss {result['train_loss']:.3f}, train acc {result['train_acc']:.3f}"] + held))
        self._print(f"{result['examples_per_sec']:.1f} examples/sec on {trainer.device}")


METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_acc", "val_acc")


def metrics_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    validated = any(point.get("val_acc") is not None for point in history)
    fields = METRIC_FIELDS if validated else tuple(f for f in METRIC_FIELDS if f != "val_acc")
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for point in history:
        writer.writerow({k: ("" if point.get(k) is None else point[k]) for k in fields})
    return buf.getvalue()


MAX_METRICS_ROW_BYTES = 128
"""The longest row :func:`metrics_csv` writes, with room to spare: an epoch of at most 7 digits and four
floats of at most 24 characters each, with their commas."""
MAX_METRICS_BYTES = 1024 + MAX_EPOCHS * MAX_METRICS_ROW_BYTES
"""The largest ``metrics.csv`` read (about 128 MB): a run of :data:`MAX_EPOCHS` epochs, one row each.  A
larger file is not one training wrote, and reading it whole would take minutes and gigabytes (compare
reads it, and the explain page every few seconds)."""


def read_metrics_csv(path: str | Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` back as curve points, every field of :data:`METRIC_FIELDS` (None where a series
    has no value: ``val_acc`` of a run without a validation split, ``test_acc`` of one with it); [] when
    it is not written yet.  ConfigError naming the file (and the line) when it is not one this module
    wrote: larger than :data:`MAX_METRICS_BYTES` or :data:`MAX_EPOCHS` rows, not a regular file, a row
    with more or fewer fields than the header, a value that is not a finite number.  Such a file is
    refused rather than partly shown: training writes every row whole, so it was edited or damaged, and
    curves drawn from what is left would look like the run's own."""
    path = Path(path)
    try:
        found = os.stat(path)
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(f"{path} is not a regular file; the run directory is damaged") from None
        if found.st_size > MAX_METRICS_BYTES:
            raise _too_large(path)
        with open(path, "rb") as f:
            data = f.read(MAX_METRICS_BYTES + 1)    # bounded: the file may grow after the check
        if len(data) > MAX_METRICS_BYTES:
            raise _too_large(path)
        text = data.decode("utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); the run directory is damaged") from None
    try:
        return _metric_points(csv.reader(io.StringIO(text, newline="")))
    except (ValueError, csv.Error) as exc:
        raise ConfigError(f"{path} is not a cnnlab metrics file ({exc}); the run directory is damaged") from None


SUMMARY_NUMBERS = ("val_acc", "test_acc", "train_acc", "train_loss", "train_seconds", "examples_per_sec",
                   "wall_seconds")
"""The numbers of a run's ``summary.json`` that commands read back (each a number, or absent or null)."""


class DamagedSummary(ConfigError):
    """A ``summary.json`` that is not one training wrote."""


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``summary.json`` (written when its training ends), or None when there is none yet.
    :class:`DamagedSummary` naming the file when it is not one training wrote: not UTF-8 JSON, not a
    mapping, or one of :data:`SUMMARY_NUMBERS` not a number (NaN is one: the speed of a run that trained
    no step).  The one reader of it: ``compare`` refuses such a run; a resumed run or sweep cell computes
    its numbers again from its checkpoint."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:   # unreadable, not UTF-8, not JSON
        raise DamagedSummary(_damaged(path, (str(exc).splitlines() or [type(exc).__name__])[0][:120])) from None
    if not isinstance(summary, dict):
        raise DamagedSummary(_damaged(path, f"it holds a {type(summary).__name__}, not a mapping"))
    for key in SUMMARY_NUMBERS:
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DamagedSummary(_damaged(path, f"{key} is {value!r:.40}"))
    return summary


def _damaged(path: Path, reason: str) -> str:
    return f"{path} is damaged ({reason}): it is not the summary training wrote"


def _too_large(path: Path) -> ConfigError:
    return ConfigError(f"{path} is larger than a metrics file of {MAX_EPOCHS:,d} epochs can be "
                       f"({MAX_METRICS_BYTES:,d} bytes); it is not one training wrote: the run directory is damaged")


def _metric_points(reader) -> list[dict[str, float | None]]:
    header = next(reader, None)
    if header is None:
        return []
    if "epoch" not in header:
        raise ValueError("no epoch column")
    columns = {name: header.index(name) for name in METRIC_FIELDS if name in header}
    points = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue           # a blank line (an editor's last newline)
        if len(points) >= MAX_EPOCHS:
            raise ValueError(f"line {line}: more than {MAX_EPOCHS:,d} epochs")
        if len(row) != len(header):
            raise ValueError(f"line {line} has {len(row)} fields, the header {len(header)}")
        point = dict.fromkeys(METRIC_FIELDS)
        for name, column in columns.items():
            if row[column] == "":
                continue
            try:
                value = float(row[column])
            except ValueError:
                raise ValueError(f"line {line}: {name} {row[column]!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"line {line}: {name} is {row[column]}, not a finite number")
            point[name] = value
        points.append(point)
    return points


class RunDirWriter(Callback):
    """Keeps ``metrics.csv``, ``curves.png``, ``checkpoint.pt`` and ``summary.json`` of a run
    directory up to date: after every epoch, on Ctrl-C, and at the end.

    ``checkpoint_on_interrupt=False`` keeps the last epoch's checkpoint on Ctrl-C (distributed
    runs: a mid-epoch checkpoint would hold only rank 0's share of the epoch's metric sums, and
    the other processes may be one step further or already stopped).

    ``curves.png`` is redrawn at most every ``PLOT_EVERY_S`` seconds, counted from the start of
    training (drawing it costs ~0.2 s, a seventh of an epoch of the fast LeNet path, and importing
    matplotlib as much again), and always after the last epoch and on Ctrl-C."""

    PLOT_EVERY_S = 10.0

    def __init__(self, run_dir: str | Path, checkpoint_on_interrupt: bool = True):
        self.run_dir = Path(run_dir)
        self.checkpoint_on_interrupt = checkpoint_on_interrupt
        self._last_plot: float | None = None
        self._held: set[str] = set()

    def _write(self, trainer, checkpoint: bool = True, plot: bool = True):
        self._write_view("metrics.csv", lambda path: write_text(path, metrics_csv(trainer.state.history)))
        if plot and trainer.state.history:
            figure = plot_curves(trainer.state.history, trainer.epochs)
            self._write_view("curves.png", lambda path: save_figure(path, figure, dpi=120))
            self._last_plot = time.monotonic()
        if checkpoint:
            trainer.save_checkpoint(self.run_dir / "checkpoint.pt")

    def _write_view(self, name: str, write) -> None:
        """Write a file people watch while training runs.  One that another program holds open (a
        spreadsheet showing metrics.csv on Windows) is left as it was, with a note, and written again at
        the next epoch: training goes on, and the checkpoint holds every epoch."""
        try:
            write(self.run_dir / name)
        except FileInUseError as exc:
            if name not in self._held:
                print(f"note: {exc}; training goes on, and {name} is brought up to date once it is closed",
                      file=sys.stderr, flush=True)
            self._held.add(name)
        else:
            self._held.discard(name)

    def on_fit_start(self, trainer):
        self._last_plot = time.monotonic()

    def on_epoch_end(self, trainer, epoch, record):
        due = self._last_plot is None or time.monotonic() - self._last_plot >= self.PLOT_EVERY_S
        self._write(trainer, plot=due or epoch + 1 >= trainer.epochs)

    def on_interrupt(self, trainer):
        self._write(trainer, checkpoint=self.checkpoint_on_interrupt)

    def on_fit_end(self, trainer, result):
        write_json(self.run_dir / "summary.json", result)
        for name in sorted(self._held):
            print(f"note: {self.run_dir / name} is out of date: another program held it open to the end; "
                  f"every epoch is in checkpoint.pt and in the lines above", file=sys.stderr, flush=True)
