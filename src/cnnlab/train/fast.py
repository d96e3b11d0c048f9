"""Fast paths for the training step: ``torch.compile``, bf16 autocast and CUDA graphs, each with a plain fallback.

What pays depends on the device, so ``plan_speed`` decides from measurements recorded in the
README ("Speed"):

* CUDA: bf16 autocast by default, and where the step allows (single process, SGD at a constant
  learning rate, no augmentation: the seed's recipe) the whole step is captured once as a CUDA graph
  of PyTorch's eager kernels and replayed (:class:`GraphStep`; no compilation).  ``compile="on"``
  compiles the forward pass and the loss instead (``mode="reduce-overhead"``: CUDA graphs for
  forward and backward); on an H200 its cold compile made the 10-epoch recipe slower end to end
  (29.0 s against 16.8 s eager), so it is not the default.
* CPU: the hand-fused LeNet step (``cnnlab.train.lenet_kernel``) wherever the network has LeNet's
  shape, in bf16 on CPUs with native bf16 dot products, else in float32 (its memory-bound passes in
  C, ``cnnlab.train.native``, where the system has a C compiler; ``benchmarks/kernel.py``: 4.7x the
  plain step on this project's 2-core machine); for other convolutional networks channels-last
  (NHWC) weights and inputs, with bf16 autocast on CPUs with native bf16.  Compiling saved about 10 % per step,
  less than the 10-40 s a cold compile costs the 10-epoch recipe (``compile="on"``); NCHW bf16
  autocast was slower than fp32 unless compiled.

Numerics: compile changes the order of floating-point operations, bf16 changes their precision;
``tests/test_speed_paths.py`` checks that each path reaches the plain path's accuracy band on real
data.  The last, partial batch of an epoch runs eagerly (same parameters, same numerics as the plain
path) instead of compiling a second graph for its shape.  If compilation is unavailable or fails, the
step falls back to the plain path with one warning and training goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from cnnlab.errors import ConfigError

COMPILE_CHOICES = ("auto", "on", "off")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
KERNEL_CHOICES = ("auto", "on", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
_SETTINGS = {"compile": ("compile setting", COMPILE_CHOICES), "precision": ("precision", PRECISION_CHOICES),
             "kernel": ("kernel setting", KERNEL_CHOICES), "channels_last": ("channels-last setting", CHANNELS_LAST_CHOICES)}


def check_speed_settings(**settings: str) -> None:
    """Raise ConfigError naming the first of ``compile``, ``precision``, ``kernel``, ``channels_last``
    that is not one of its choices."""
    for name, value in settings.items():
        label, choices = _SETTINGS[name]
        if value not in choices:
            raise ConfigError(f"unknown {label} {value!r}; choose one of {', '.join(choices)}")


def compiler_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot produce code for ``device`` here, or None if it can.

    Inductor needs a C++ compiler for CPU code and Triton for CUDA code; without them the first
    compiled call fails deep inside PyTorch, so the plan checks first and says what is missing.
    ``CNNLAB_NO_COMPILE=1`` turns compilation off everywhere (e.g. to compare, or on a broken toolchain).
    """
    if os.environ.get("CNNLAB_NO_COMPILE", "") not in ("", "0"):
        return "CNNLAB_NO_COMPILE is set"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        importlib.import_module("torch._dynamo")  # fails on Python versions dynamo does not support
    except Exception as exc:  # pragma: no cover - depends on the installation
        return f"torch.compile is not supported here ({exc})"
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None and shutil.which("c++") is None and shutil.which("clang++") is None:
            return "no C++ compiler (g++, c++ or clang++) on PATH"
        return None
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
        return None
    return f"cnnlab does not compile for {device.type} devices"


@dataclass(frozen=True)
class SpeedPlan:
    """The fast paths chosen for one run, and why."""

    compile: bool
    precision: str                 # "fp32" or "bf16" (autocast)
    cuda_graphs: bool
    note: str = ""                 # why a requested path is off (e.g. no compiler)
    kernel: bool = False           # the hand-fused LeNet step (CPU)
    channels_last: bool = False    # NHWC weights and inputs for PyTorch's convolutions
    kernel_c: bool = False         # the kernel runs its memory-bound passes in C (cnnlab.train.native)

    def describe(self) -> str:
        parts = [f"compile={'on' if self.compile else 'off'}", f"precision={self.precision}",
                 f"cuda_graphs={'on' if self.cuda_graphs else 'off'}",
                 f"channels_last={'on' if self.channels_last else 'off'}", f"kernel={('lenet+c' if self.kernel_c else 'lenet') if self.kernel else 'off'}"]
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


def plan_speed(device: torch.device, compile: str = "auto", precision: str = "auto", kernel: str = "auto",
               model: nn.Module | None = None, loss_fn: nn.Module | None = None,
               distributed: bool = False, channels_last: str = "auto", graphable: bool = False,
               input_size: int = 28) -> SpeedPlan:
    """Resolve ``compile``, ``precision``, ``kernel`` and ``channels_last`` (auto/on/off; precision
    auto/fp32/bf16).

    ``auto`` turns a path on only where it measured faster with the recipe's accuracy (see the
    module docstring).  ``on`` where a path is impossible falls back with a note, not an error,
    so a config written on one machine still runs on another.  The kernel needs ``model`` and
    ``loss_fn`` to decide whether it applies.  ``graphable`` says the run's step may be captured whole
    as a CUDA graph (single process, SGD, constant learning rate, no augmentation): on CUDA without
    compile, the plan then uses :class:`GraphStep`.  ``input_size`` is the side of the images the model
    is trained on: the kernel is for 28x28 only (other sides can reach LeNet's 5x5 maps too: 29 to 31).
    """
    from cnnlab.train.lenet_kernel import LeNetKernel, cpu_has_native_bf16

    check_speed_settings(compile=compile, precision=precision, kernel=kernel, channels_last=channels_last)
    notes = []
    cuda = device.type == "cuda"
    use_kernel = False
    if kernel != "off":
        if device.type != "cpu":
            reason = f"the LeNet kernel is for CPUs, not {device.type}"
        elif distributed:
            reason = "the LeNet kernel does not run under DDP"
        elif compile == "on":
            reason = "--compile on asked for the compiled step instead of the LeNet kernel"
        elif model is None:
            reason = "no model given to plan for"
        elif input_size != 28:
            reason = f"the LeNet kernel is for 28x28 images, not {input_size}x{input_size}"
        else:
            reason = LeNetKernel.supports(model, loss_fn)
        use_kernel = reason is None
        if kernel == "on" and reason is not None:
            notes.append(f"kernel unavailable: {reason}")
    if precision == "bf16" and device.type == "mps":
        raise ConfigError("precision bf16 is not supported on mps; use --precision fp32")
    # Channels-last (NHWC) convolutions: on a CPU 1.25-1.75x faster per step for every network of the
    # zoo measured (LeNet, lenet_wide, vgg_mini, resnet_mini; README "Speed"); the kernel has its own layout.
    has_conv = model is not None and any(isinstance(m, nn.Conv2d) for m in model.modules())
    use_cl = False
    if channels_last == "on":
        use_cl = has_conv and not use_kernel
        if not use_cl:
            notes.append("channels-last unused: " + ("the LeNet kernel has its own layout" if use_kernel
                                                      else "no convolutions"))
    elif channels_last == "auto":
        use_cl = device.type == "cpu" and has_conv and not use_kernel
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            # bf16 on CPUs with bf16 dot products, for the kernel and for channels-last convolutions
            # (the best preset's VGG: 43 against 71 ms per step); NCHW autocast measured slower than
            # fp32 unless compiled, and emulated bf16 is slower everywhere.
            precision = "bf16" if (use_kernel or use_cl) and cpu_has_native_bf16() else "fp32"
    # auto never compiles: measured on an H200 (torch 2.11), the cold compile made the whole 10-epoch
    # recipe slower (29.0 s) than eager bf16 (16.8 s); on this project's CPU it saved ~10 % per step,
    # less than the compile itself costs.  ``on`` remains for long runs, where it can pay.
    want_compile = compile == "on"
    if want_compile:
        reason = compiler_unavailable_reason(device)
        if reason is not None:
            want_compile = False
            notes.append(f"compile unavailable: {reason}")
    # Whole-step CUDA graphs of the eager kernels where the step allows it; with compile, graphs come
    # through compile's reduce-overhead mode instead.
    graphs = cuda and (want_compile or (graphable and not distributed))
    return SpeedPlan(compile=want_compile, precision=precision, cuda_graphs=graphs,
                     note="; ".join(notes), kernel=use_kernel, channels_last=use_cl)


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast_for(device: torch.device, precision: str, cache_enabled: bool = True) -> Callable[[], ContextManager]:
    """A factory of the autocast context for ``precision`` (a no-op context for fp32).

    ``cache_enabled=False`` where the step is captured as a CUDA graph (PyTorch's CUDA-graph notes:
    no autocast weight cache across a capture)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = PRECISION_DTYPES[precision]
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def _one_line(exc: Exception) -> str:
    """``Type: first line of the message``, for a warning that names why a fast path was dropped."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first_line}"


def _nhwc(X: torch.Tensor) -> torch.Tensor:
    return X.contiguous(memory_format=torch.channels_last) if X.dim() == 4 else X


class FastStep:
    """Forward, loss and backward of one batch, by the LeNet kernel, compiled, or eager (channels-last
    inputs where the plan says so), as the plan says.

    ``forward_backward(X, y)`` leaves the gradients in the parameters and returns the detached loss
    and the number of correct predictions, both as tensors on the device (no host sync).  The
    optimizer step stays outside, in the engine, so learning-rate schedules need no recompilation.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, plan: SpeedPlan, batch_size: int):
        self.model = model
        self.loss_fn = loss_fn
        self.plan = plan
        self.batch_size = batch_size
        self._compiled: Callable | None = None
        self.fallback_reason: str | None = None
        self.kernel = None
        # eval_forward: X -> logits for evaluation, or None for the model's own forward
        self.eval_forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        if plan.kernel:
            from cnnlab.train.lenet_kernel import LeNetKernel

            # The kernel computes in its own precision: no autocast around it or around evaluation.
            self.kernel = LeNetKernel(model, PRECISION_DTYPES[plan.precision])
            self.autocast = contextlib.nullcontext
            self.eval_forward = self.kernel.logits
        else:
            self.autocast = autocast_for(next(model.parameters()).device, plan.precision,
                                         cache_enabled=not plan.cuda_graphs)
        if plan.channels_last:
            # The model's weights are converted by whoever built it (before the optimizer and DDP).
            # The bare module under DDP (see Trainer.evaluate: no collectives in evaluation).
            bare = getattr(self.model, "module", self.model)
            self.eval_forward = lambda X: bare(_nhwc(X))
        if plan.compile:
            mode = "reduce-overhead" if plan.cuda_graphs else None
            self._compiled = torch.compile(self.forward_loss, dynamic=False, mode=mode)

    def forward_loss(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and correct count, as the plan computes them (layout, precision); no backward."""
        if self.plan.channels_last:
            X = _nhwc(X)
        with self.autocast():
            logits = self.model(X)
            loss = self.loss_fn(logits, y)
        correct = (logits.argmax(dim=1) == y).sum()
        return loss, correct

    @property
    def compiled(self) -> bool:
        """True while the compiled path is in use (False after a fallback)."""
        return self._compiled is not None

    def forward_backward(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernel is not None:
            return self.kernel.forward_backward(X, y)
        if self._compiled is not None and X.shape[0] == self.batch_size:
            try:
                if self.plan.cuda_graphs:
                    # Tells the CUDA-graph runtime a new iteration begins, so the previous step's
                    # graph outputs (already consumed) may be overwritten.
                    torch.compiler.cudagraph_mark_step_begin()
                loss, correct = self._compiled(X, y)
                loss.backward()
                # Graph outputs are overwritten by the next replay: hand out copies.
                return loss.detach().clone(), correct.clone()
            except Exception as exc:  # compilation errors come in many types from many layers
                self._fall_back(exc)
        loss, correct = self.forward_loss(X, y)
        loss.backward()
        return loss.detach(), correct

    def _fall_back(self, exc: Exception) -> None:
        self._compiled = None
        self.fallback_reason = _one_line(exc)
        warnings.warn(f"torch.compile failed ({self.fallback_reason}); training continues without it",
                      RuntimeWarning, stacklevel=3)
        for p in self.model.parameters():  # a failed compiled backward may have left partial gradients
            p.grad = None


class GraphStep:
    """A whole training step (forward, loss, backward, SGD update) of a full batch as one CUDA graph.

    LeNet's step on a GPU is ~40 kernels of a few microseconds each, so launching them costs more
    than running them; replaying one captured graph costs one launch.  Unlike ``compile="on"`` this
    captures PyTorch's own eager kernels, so there is nothing to compile: capture takes milliseconds.

    ``__call__(X, y)`` returns (loss, correct) as device tensors that the next replay overwrites
    (read them before the next call), or None when the batch is not graph-shaped (the last partial
    batch) or capture failed; the caller then runs its ordinary eager step on the same parameters and
    optimizer state.  Three warm-up steps on a side stream (cuBLAS/cuDNN workspaces, algorithm
    choice) precede capture; parameters and optimizer state are restored afterwards, so training
    is exactly as if they had not run.  Valid for SGD (any momentum/Nesterov/weight decay) at a
    constant learning rate, which the graph bakes in; ``plan_speed`` only plans it then.
    """

    WARMUP_STEPS = 3

    def __init__(self, model: nn.Module,
                 forward_loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, batch_size: int):
        """``forward_loss(X, y) -> (loss, correct)`` is the run's own (``FastStep.forward_loss``: its
        layout and precision, autocast without weight cache); ``model`` holds the parameters to restore."""
        self.model, self.forward_loss, self.optimizer = model, forward_loss, optimizer
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed_reason: str | None = None

    def _step(self, X, y):
        loss, correct = self.forward_loss(X, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), correct

    def _snapshot(self):
        params = [p.detach().clone() for p in self.model.parameters()]
        state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                 for p, s in self.optimizer.state.items()}
        return params, state

    def _restore(self, snapshot) -> None:
        """Undo the warm-up in place: the graph holds the addresses of these very tensors."""
        params, state = snapshot
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params):
                p.copy_(saved)
            for p, s in self.optimizer.state.items():
                before = state.get(id(p), {})
                for k, v in s.items():
                    if torch.is_tensor(v):
                        if k in before:
                            v.copy_(before[k])
                        else:
                            # SGD's first step sets the buffer to the gradient; from zeros, with no
                            # dampening (cnnlab never sets any), the captured update gives the same.
                            v.zero_()

    def _capture(self, X, y) -> None:
        snapshot = self._snapshot()
        self.static_X, self.static_y = X.clone(), y.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._step(self.static_X, self.static_y)
            torch.cuda.current_stream().wait_stream(side)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_loss, self.static_correct = self._step(self.static_X, self.static_y)
            self.graph = graph
        finally:
            torch.cuda.synchronize()
            self._restore(snapshot)
            self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.failed_reason is not None or X.shape[0] != self.batch_size:
            return None
        if self.graph is None:
            try:
                self._capture(X, y)
            except Exception as exc:  # capture errors come from many layers (cuDNN, allocator, autograd)
                self.failed_reason = _one_line(exc)
                warnings.warn(f"CUDA graph capture failed ({self.failed_reason}); training continues without it",
                              RuntimeWarning, stacklevel=2)
                return None
        self.static_X.copy_(X)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss, self.static_correct
