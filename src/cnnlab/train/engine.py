"""The training engine: d2l's ``train_ch6`` loop, done properly.

``Trainer`` runs the book's loop (a training step per batch: forward, cross-entropy, backward, SGD
update; train loss and accuracy averaged over examples; test accuracy after every epoch; five curve
points per epoch, as the book's Animator) and adds what the book leaves out: the step is an object it is given
(``cnnlab.train.steps``: eager, CUDA graph or the LeNet kernel, chosen by ``choose_step``); metrics accumulated on the device (no host sync per step),
NaN detection, checkpoints that resume mid-epoch bit for bit, a clean Ctrl-C, and hooks
(callbacks) for everything that is not training.  Distributed training plugs in through
``reduce`` (an all-reduce of metric tensors) without touching the loop.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from cnnlab.device import synchronize
from cnnlab.errors import TrainingError
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_model_state, save_checkpoint
from cnnlab.train.steps import TrainStep, accuracy_count, sum_dtype

POINTS_PER_EPOCH = 5
"""Curve points per epoch (train loss and accuracy so far), as the book's Animator draws them."""


def init_weights(model: nn.Module, scheme: str = "xavier") -> None:
    """The book's initialisation: Xavier-uniform weights of every Linear and Conv2d layer
    (biases keep PyTorch's default).  ``"default"`` leaves PyTorch's own initialisation."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, batches: Iterable, device: torch.device | None = None,
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> float:
    """Fraction of correct predictions over ``batches``; counts stay on the device until the end.

    ``forward`` (X -> logits) replaces ``model(X)``: a training step's ``logits``, so that a run is
    measured as it trains (its precision, layout or kernel).  ``on_batch(X, y, logits)`` sees every
    batch as it is scored (on the device), for whatever more than the accuracy a caller wants from
    the same pass.
    """
    forward = forward or model
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    for X, y in batches:
        X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = forward(X)
        if on_batch is not None:
            on_batch(X, y, logits)
        counts[0] += accuracy_count(logits, y)
        counts[1] += y.numel()
    if reduce is not None:
        counts = reduce(counts)
    model.train(was_training)
    correct, total = counts.tolist()
    return correct / total if total else float("nan")


@dataclass
class TrainState:
    """Everything that changes while training, and nothing else: saved in checkpoints."""

    epoch: int = 0                 # epochs completed
    step: int = 0                  # batches completed inside the current epoch
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n this epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0     # time inside training loops (the book's timer)
    examples_seen: int = 0


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step, so the
    checkpoint written then is consistent; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Interrupted(Exception):
    """Raised by ``fit`` after a Ctrl-C, once the callbacks have saved the state.

    ``stopped_at`` is the (epoch, batch) position training stopped at, ``saved_at`` the position of
    the checkpoint on disk (None when none was written): the same after a single-process Ctrl-C, an
    epoch's end in a distributed run, whose mid-epoch state is not saved."""

    def __init__(self, message: str, *, stopped_at: tuple[int, int] | None = None,
                 saved_at: tuple[int, int] | None = None):
        super().__init__(message)
        self.stopped_at = stopped_at
        self.saved_at = saved_at


@dataclass(frozen=True)
class RunInfo:
    """What a run is beyond its step and its batches, known before it trains and fixed while it does."""

    record: Mapping[str, Any] = field(default_factory=dict)
    """What every checkpoint records of the run beside its state: the model and its options, the class
    names, the image shape, the input size, the config (``cnnlab.trained.TrainedRun`` reads them back)."""
    notes: tuple[str, ...] = ()
    """What reading the data noticed (images left out, a split made), for the user before training."""
    data_seconds: float = 0.0
    """Reading the data and copying it to the device."""
    build_seconds: float = 0.0
    """Building the model, the training step and the rest of the trainer."""

    @property
    def classes(self) -> list[str]:
        """The class names, in label order (none for a run that did not record them)."""
        return list(self.record.get("classes", ()))


class MetricSums:
    """An epoch's running metric sums (loss x examples, correct predictions, examples) and the first step
    whose loss diverged (NaN, infinite or above ``limit``), kept in tensors on the device: no host sync
    per step."""

    def __init__(self, device: torch.device, limit: float):
        self.limit = limit
        self.dtype = sum_dtype(device)
        self.sums = torch.zeros(3, dtype=self.dtype, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def reset(self, sums: Sequence[float]) -> None:
        self.sums = torch.tensor(list(sums), dtype=self.dtype, device=self.sums.device)
        self.first_bad.fill_(-1)

    @torch.no_grad()
    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: int, step: int) -> None:
        # The count is added as a Python scalar: a tensor built from it would be a host-to-device copy,
        # which on CUDA waits for the queued kernels every step.
        self.sums[:2] += torch.stack((loss_sum, correct.to(self.dtype)))
        self.sums[2] += n
        diverged = ~torch.isfinite(loss_sum) | (loss_sum > self.limit * n)
        self.first_bad = torch.where((self.first_bad < 0) & diverged, step, self.first_bad)

    def tensor(self) -> torch.Tensor:
        """A copy of the sums, for an all-reduce."""
        return self.sums.clone()

    def tolist(self) -> list[float]:
        return self.sums.tolist()

    def first_bad_step(self) -> int:
        return int(self.first_bad.item())


class Trainer:
    """Train with ``step`` (a :class:`cnnlab.train.steps.TrainStep`: it holds the model and the
    optimizer) on ``train_batches`` and measure it after every epoch on ``test_batches``, or on
    ``val_batches`` where there is a validation split (the test split, if any, is then scored once,
    after the last epoch).

    ``train_batches`` must offer ``batches(epoch, start)`` and ``len()`` (as
    :class:`cnnlab.data.loader.BatchIterator` does), so any epoch can be replayed or resumed.
    ``augment(X, epoch, step)`` transforms each training batch; ``eval_forward`` (X -> logits) replaces
    the step's own ``logits`` where the test split is scored (e.g. with test-time augmentation around it;
    a validation split is scored by the plain network, a sixth of flip-shift's cost every epoch); ``reduce``
    all-reduces metric tensors in a distributed run.  ``callbacks`` are called in their order at every
    hook; ``run`` says what the run is (:class:`RunInfo`).
    """

    def __init__(self, step: TrainStep, train_batches, test_batches, *, epochs: int, device: torch.device,
                 val_batches=None, eval_forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 scheduler=None, augment: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, callbacks: Sequence[Callback] = (),
                 divergence_limit: float = 100 * math.log(10), run: RunInfo = RunInfo()):
        self.step = step
        self.train_batches = train_batches
        self.test_batches = test_batches
        self.val_batches = val_batches
        self.held_out_name = "val" if val_batches is not None else "test"
        """What each epoch is measured on: "test" (the book), or "val", a validation split."""
        self.held_out_batches = val_batches if val_batches is not None else test_batches
        self.epochs = epochs
        self.device = device
        self.scheduler = scheduler
        self.callbacks = tuple(callbacks)
        self.augment = augment
        self.reduce = reduce
        self.run = run
        self.eval_forward = eval_forward or step.logits
        # A mean cross-entropy far above chance level (ln(classes); the default limit is 100x that for
        # 10 classes) means the run has diverged, even while it is still finite: SGD on saturating
        # networks grows the loss linearly with the learning rate, never to NaN.
        self.divergence_limit = divergence_limit
        self.state = TrainState()
        self.last_checkpoint: str | None = None
        """The checkpoint this run last saved (or resumed from): what a divergence leaves the user."""
        self.saved_at: tuple[int, int] | None = None
        """(epoch, batch) position of ``last_checkpoint``."""
        self.steps_per_epoch = len(train_batches)
        self._sums = MetricSums(device, divergence_limit)
        # Seconds this process spent in each part of the run, reported in the result (summary.json) and
        # by ``cnnlab train --profile``; "first_step" (lazy initialisation, graph capture, loading the C
        # passes) is part of "train".
        self.timings: dict[str, float] = {"data": run.data_seconds, "build": run.build_seconds, "first_step": 0.0,
                                          "train": 0.0, "evaluate": 0.0, "epoch_end": 0.0}
        self._first_step_timed = False

    @property
    def model(self) -> nn.Module:
        return self.step.model

    @property
    def optimizer(self):
        return self.step.optimizer

    # ---- hooks -------------------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---- metrics -----------------------------------------------------------------------------
    def _reduced_sums(self) -> list[float]:
        return self._sums.tolist() if self.reduce is None else self.reduce(self._sums.tensor()).tolist()

    def running_metrics(self) -> tuple[float, float]:
        """(train loss, train accuracy) of the current epoch so far."""
        loss_sum, correct, n = self._reduced_sums()
        return (loss_sum / n, correct / n) if n else (float("nan"), float("nan"))

    def _point_steps(self) -> set[int]:
        """Steps after which the book's Animator adds a point: every num_batches // 5, and the last."""
        every = max(1, self.steps_per_epoch // POINTS_PER_EPOCH)
        return {i for i in range(self.steps_per_epoch) if (i + 1) % every == 0} | {self.steps_per_epoch - 1}

    def _check_finite(self, epoch: int) -> None:
        bad = self._sums.first_bad_step()
        if bad >= 0:
            raise TrainingError(
                f"the loss diverged (NaN, infinite or above {self.divergence_limit:.0f}) at epoch {epoch + 1}, "
                f"batch {bad + 1}; "
                f"try a smaller learning rate (now {self.optimizer.param_groups[0]['lr']:g}); "
                + (f"the last good checkpoint is kept ({self.last_checkpoint})" if self.last_checkpoint
                   else "no checkpoint was written yet"))

    # ---- the loop ----------------------------------------------------------------------------
    def _train_step(self, X: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> None:
        if self.augment is not None:
            # Seeded by where the batch sits in the run, so a resumed run replays it exactly.
            X = self.augment(X, epoch, step)
        loss_sum, correct = self.step(X, y)
        if self.scheduler is not None:
            self.scheduler.step()
        self._sums.add(loss_sum, correct, y.shape[0], step)

    def train_epoch(self, epoch: int, stop: _StopRequest | None = None) -> bool:
        """Run (the rest of) one epoch; returns False if a stop was requested."""
        points = self._point_steps()
        self.model.train()
        start_step = self.state.step
        self._sums.reset(self.state.sums)
        began = time.perf_counter()
        step = start_step
        try:
            for step, (X, y) in enumerate(self.train_batches.batches(epoch, start_step), start=start_step):
                self._train_step(X, y, epoch, step)
                if not self._first_step_timed:
                    synchronize(self.device)
                    self.timings["first_step"] = time.perf_counter() - began
                    self._first_step_timed = True
                self.state.step = step + 1
                self._call("on_step_end", epoch, step)
                if step in points:
                    self._check_finite(epoch)
                    loss, acc = self.running_metrics()
                    point = {"epoch": epoch + (step + 1) / self.steps_per_epoch,
                             "train_loss": loss, "train_acc": acc, "test_acc": None}
                    self.state.history.append(point)
                    self._call("on_point", point)
                if stop is not None and stop.requested and self.state.step < self.steps_per_epoch:
                    return False
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - began
            self.state.train_seconds += elapsed
            self.timings["train"] += elapsed
            self.state.sums = self._sums.tolist()
        self._check_finite(epoch)
        return True

    def evaluate(self, batches=None, on_batch=None) -> float:
        """Accuracy on ``batches`` (default: the split each epoch is measured on): the validation split by
        the plain network, the test split by ``eval_forward``."""
        batches = self.held_out_batches if batches is None else batches
        forward = self.step.logits if batches is self.val_batches else self.eval_forward
        return evaluate_accuracy(self.step.module, batches, self.device, self.reduce, forward, on_batch)

    def _held_out_batch(self, X: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        self._call("on_held_out_batch", X, y, logits)

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` are done; returns the final numbers (also given to ``on_fit_end``)."""
        wall_start = time.perf_counter()
        first_epoch = self.state.epoch
        self._call("on_fit_start")
        with _StopRequest() as stop:
            try:
                while self.state.epoch < self.epochs:
                    epoch = self.state.epoch
                    self._call("on_epoch_start", epoch)
                    epoch_start = time.perf_counter()
                    if not self.train_epoch(epoch, stop):
                        self._call("on_interrupt")
                        raise self._interrupted(f"stopped at epoch {epoch + 1}, batch {self.state.step}")
                    evaluation_start = time.perf_counter()
                    held_acc = self.evaluate(on_batch=self._held_out_batch)
                    self.timings["evaluate"] += time.perf_counter() - evaluation_start
                    loss_sum, correct, n = self._reduced_sums()
                    key = f"{self.held_out_name}_acc"
                    record = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                              "test_acc": None, key: held_acc, "epoch_seconds": time.perf_counter() - epoch_start}
                    self.state.history.append({"epoch": float(epoch + 1), "train_loss": None,
                                               "train_acc": None, "test_acc": None, key: held_acc})
                    self.state.examples_seen += int(n)
                    self.state.epoch, self.state.step, self.state.sums = epoch + 1, 0, [0.0, 0.0, 0.0]
                    callbacks_start = time.perf_counter()
                    self._call("on_epoch_end", epoch, record)
                    self.timings["epoch_end"] += time.perf_counter() - callbacks_start
                    if stop.requested:
                        self._call("on_interrupt")
                        raise self._interrupted(f"stopped after epoch {epoch + 1}")
            except Interrupted:
                raise
            except Exception as exc:
                # Ctrl-C reaches every process of a distributed run at once, but each stops after its own
                # current step: a peer that stopped first leaves this one in a collective that then fails.
                if stop.requested and self.reduce is not None:
                    self._call("on_interrupt")
                    raise self._interrupted(f"stopped at epoch {self.state.epoch + 1} as its peers did") from exc
                raise
        last = record if self.state.epoch > first_epoch else self._final_from_history()
        extra = {}
        if self.held_out_name == "val":
            extra["val_acc"] = last["val_acc"]
            started = time.perf_counter()
            last = {**last, "test_acc": self.evaluate(self.test_batches) if self.test_batches is not None else None}
            self.timings["evaluate"] += time.perf_counter() - started
        result = {
            "train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"], **extra,
            "epochs": self.epochs,
            "examples_per_sec": self.state.examples_seen / self.state.train_seconds
            if self.state.train_seconds else float("nan"),
            "train_seconds": self.state.train_seconds,
            "wall_seconds": time.perf_counter() - wall_start,
            "device": str(self.device),
            "timings": dict(self.timings),
        }
        self._call("on_fit_end", result)
        return result

    def _interrupted(self, message: str) -> Interrupted:
        return Interrupted(message, stopped_at=(self.state.epoch, self.state.step),
                           saved_at=self.saved_at if self.last_checkpoint else None)

    def _final_from_history(self) -> dict[str, Any]:
        """Final numbers of a run that was already complete when resumed."""
        key = f"{self.held_out_name}_acc"
        train = [p for p in self.state.history if p["train_loss"] is not None]
        held = [p for p in self.state.history if p.get(key) is not None]
        if not train or not held:
            raise TrainingError("the run has no completed epoch to report")
        return {"train_loss": train[-1]["train_loss"], "train_acc": train[-1]["train_acc"],
                key: held[-1][key]}

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        model = self.step.module  # unwrapped from DistributedDataParallel
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            **self.run.record,
            "model_state": model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "state": {"epoch": self.state.epoch, "step": self.state.step, "sums": list(self.state.sums),
                      "history": self.state.history, "train_seconds": self.state.train_seconds,
                      "examples_seen": self.state.examples_seen},
            "rng": rng,
            "complete": self.state.epoch >= self.epochs,
        }

    def save_checkpoint(self, path: str | Path) -> None:
        save_checkpoint(path, self.checkpoint_payload())
        self.last_checkpoint = str(path)
        self.saved_at = (self.state.epoch, self.state.step)

    def load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Restore everything a checkpoint holds; the next ``fit`` continues where it stopped."""
        model = self.step.module
        load_model_state(model, ckpt["model_state"], ckpt.get("path", "?"))
        self.last_checkpoint = ckpt.get("path")
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None and ckpt.get("scheduler_state") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        s = ckpt["state"]
        self.state = TrainState(epoch=int(s["epoch"]), step=int(s["step"]), sums=[float(v) for v in s["sums"]],
                                history=list(s["history"]), train_seconds=float(s["train_seconds"]),
                                examples_seen=int(s["examples_seen"]))
        self.saved_at = (self.state.epoch, self.state.step)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
