"""Where a run's time goes: ``cnnlab train --profile``.

Two views, both from one ordinary run:

* a table of wall-clock seconds by phase, from the process's start to the end of training:
  start-up (interpreter and imports), data (read, verify, copy to the device), set-up (model,
  optimizer, fast paths), the first step (lazy initialisation, CUDA-graph capture, loading the C
  passes), the other training steps, evaluation, and the end-of-epoch writes (checkpoints, logs,
  plots).  The phases come from the trainer's own timers (``Trainer.timings``), which every run
  keeps and reports in ``summary.json``;
* a ``torch.profiler`` trace of a few steady-state steps (the middle of the second epoch this
  process trains, or of the first if it trains one): ``trace.json`` in the run directory, for
  https://ui.perfetto.dev or chrome://tracing, and the operators that took the most time in
  ``profile.txt`` beside the table.  The LeNet kernel's C passes are named ranges there
  (``cnnlab::conv1_forward``, ...; see ``cnnlab.kernels.lenet.native``).

The traced steps run slower (the profiler records every operator); starting, stopping and exporting
it is timed and reported on its own line, not charged to the steps.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

from cnnlab.device import synchronize
from cnnlab.fileio import write_bytes, write_text
from cnnlab.text import display_width, pad
from cnnlab.train.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.train.engine import Trainer


class ProfileReport(Callback):
    """Prints the phase table after the run's closing lines and writes ``profile.txt`` and
    ``trace.json`` into ``run_dir`` (when given).

    ``startup`` is the process's age when the command began (:func:`cnnlab.portable.process_age`), or None where
    that is unknown or meaningless (a notebook); ``trace_steps`` is how many steps the trace covers
    (0: no trace).  In a distributed run only the process with ``show=True`` (rank 0) reports."""

    def __init__(self, run_dir: str | Path | None = None, *, startup: float | None = None, trace_steps: int = 10,
                 out: TextIO | None = None, show: bool = True):
        self.created = time.perf_counter()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.startup = startup
        self.trace_steps = trace_steps if show else 0
        self.out = out
        self.show = show
        self.steps = 0
        self.profiler: torch.profiler.profile | None = None
        self.traced: tuple[int, int, int] | None = None    # (epoch, first step, number of steps)
        self.overhead = 0.0                               # seconds spent starting and stopping the profiler
        self.export_seconds = 0.0                         # ... and writing its trace and table, after training
        self.window: tuple[int, int, int] | None = None
        """(epoch, first step, number of steps) the trace will cover, once training starts; None: no trace."""

    # ---- the trace window --------------------------------------------------------------------
    def on_fit_start(self, trainer: "Trainer") -> None:
        self.fit_start = time.perf_counter()
        self._first_epoch = trainer.state.epoch
        steps = trainer.steps_per_epoch
        epoch = trainer.state.epoch + 1 if trainer.state.epoch + 1 < trainer.epochs else trainer.state.epoch
        first = trainer.state.step if epoch == trainer.state.epoch else 0   # a resumed epoch starts later
        count = min(self.trace_steps, steps - first)
        if count > 0:
            self.window = (epoch, first + (steps - first - count) // 2, count)

    def _start(self, trainer: "Trainer") -> None:
        began = time.perf_counter()
        # Kineto logs "USDT: ... profiler_start/stop" lines on stderr at its default level; quiet unless
        # the user chose a level.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        self.profiler.start()
        self.overhead += time.perf_counter() - began

    def _stop(self, trainer: "Trainer") -> None:
        began = time.perf_counter()
        synchronize(trainer.device)   # the trace holds the device's work for these steps
        self.profiler.stop()
        self.traced = self.window
        self.overhead += time.perf_counter() - began

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        if self.window is not None and self.window[0] == epoch and self.window[1] == trainer.state.step:
            self._start(trainer)

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int) -> None:
        self.steps += 1
        if self.window is None or self.window[0] != epoch:
            return
        _, first, count = self.window
        if step == first - 1:
            self._start(trainer)
        elif step == first + count - 1 and self.profiler is not None and self.traced is None:
            self._stop(trainer)

    def on_interrupt(self, trainer: "Trainer") -> None:
        if self.profiler is not None and self.traced is None:
            self.profiler.stop()

    # ---- the report --------------------------------------------------------------------------
    def phases(self, trainer: "Trainer") -> list[tuple[str, float]]:
        """(label, seconds) of each phase up to now, in the order they happened."""
        t = trainer.timings
        now = time.perf_counter()
        steps_after_first = max(self.steps - 1, 0)
        step_seconds = max(t["train"] - t["first_step"] - self.overhead, 0.0)
        per_step = f"; {1000 * step_seconds / steps_after_first:.2f} ms each" if steps_after_first else ""
        test = getattr(trainer.held_out_batches, "num_examples", None)
        epochs = trainer.state.epoch - self._first_epoch
        evaluated = f" ({epochs} x {test:,} images)" if test is not None else ""
        rows = []
        if self.startup is not None:
            rows.append(("start-up (interpreter, imports, flags)", self.startup))
        rows += [
            ("data (read, verify, copy to the device)", t["data"]),
            ("set-up (model, optimizer, fast paths)", max(self.fit_start - self.created - t["data"], 0.0)),
            ("first step (lazy initialisation, capture)", t["first_step"]),
            (f"training steps ({steps_after_first:,} more{per_step})", step_seconds),
            (f"evaluation{evaluated}", t["evaluate"]),
            ("epoch ends (checkpoints, logs, plots)", t["epoch_end"]),
        ]
        if self.overhead or self.export_seconds:
            rows.append(("the profiler (start, stop, export)", self.overhead + self.export_seconds))
        named = sum(seconds for _, seconds in rows) - (self.startup or 0.0)
        rows.append(("other (loop, progress, final writes)", max(now - self.created - named, 0.0)))
        return rows

    def table(self, trainer: "Trainer") -> str:
        rows = self.phases(trainer)
        total = sum(seconds for _, seconds in rows)
        width = max(display_width(label) for label, _ in rows)
        since = "the process's start" if self.startup is not None else "the start of training"
        lines = [f"where the time went, from {since} (seconds):"]
        lines += [f"  {pad(label, width)}  {seconds:8.3f}  {100 * seconds / total:5.1f} %" for label, seconds in rows]
        lines.append(f"  {pad('total', width)}  {total:8.3f}")
        return "\n".join(lines)

    def _top_operators(self, trainer: "Trainer") -> str:
        sort = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
        epoch, first, count = self.traced
        title = f"operators of steps {first + 1}-{first + count} of epoch {epoch + 1}, by {sort.replace('_', ' ')}"
        return title + "\n" + self.profiler.key_averages().table(sort_by=sort, row_limit=20)

    def on_fit_end(self, trainer: "Trainer", result: dict[str, Any]) -> None:
        if not self.show:
            return
        lines, operators = [], ""
        if self.traced is not None:
            # Exported before the table is made, so the table's total covers the export (counted as the
            # profiler's own time, like starting and stopping it).
            began = time.perf_counter()
            operators = "\n\n" + self._top_operators(trainer)
            epoch, first, count = self.traced
            if self.run_dir is not None:
                trace = self.run_dir / "trace.json"
                with tempfile.TemporaryDirectory() as tmp:
                    exported = Path(tmp) / "trace.json"
                    self.profiler.export_chrome_trace(str(exported))
                    write_bytes(trace, exported.read_bytes())
                lines.append(f"trace of steps {first + 1}-{first + count} of epoch {epoch + 1}: {trace} "
                             f"(open in https://ui.perfetto.dev or chrome://tracing)")
            self.export_seconds = time.perf_counter() - began
        table = self.table(trainer)
        lines.insert(0, table)
        if self.run_dir is not None:
            write_text(self.run_dir / "profile.txt", table + operators + "\n")
            lines.append(f"the table and the top operators: {self.run_dir / 'profile.txt'}")
        print("\n".join(lines), file=self.out or sys.stdout, flush=True)
