"""The training step: one object that does forward, loss, backward and the optimizer's update of a batch.

Three implementations, one interface (:class:`TrainStep`):

* :class:`EagerStep`: PyTorch's own layers, in a precision (fp32, or bf16 autocast) and a memory
  format (NCHW, or channels-last) given as parameters, optionally ``torch.compile``-d;
* :class:`GraphStep`: a whole eager step of a full batch captured once as a CUDA graph and replayed;
* :class:`KernelStep`: the hand-fused LeNet kernel (``cnnlab.kernels.lenet``) on the CPU.

:func:`choose_step` returns the step and a one-line account of what runs and why, which a run prints
and records (``config.json``'s ``speed``).  It is three parts: :func:`describe_model` and
:func:`device_facts` look at the network and the machine (device, CPU flags, compilers,
``CNNLAB_NO_COMPILE``); :func:`plan_step` decides from their facts and the config alone, a pure
function, into a :class:`StepPlan`; :func:`build_step` makes that step (channels-last weights, the
optimizer, DDP, the LeNet kernel's C passes where they build, else its PyTorch passes:
``CNNLAB_NO_NATIVE``).

What pays where is measured in ``benchmarks/`` (``benchmarks/RESULTS.md``):

* CPU: the LeNet kernel wherever the network has LeNet's shape (its memory-bound passes in C where
  the system has a C compiler; ``benchmarks/kernel.py``), in bf16 on CPUs with native bf16 dot
  products, else float32; for other convolutional networks channels-last weights and inputs, with
  bf16 autocast on CPUs with native bf16, except where batch norm normalises fewer than 16 channels
  (there plain NCHW float32).
* CUDA: bf16 autocast where supported; where nothing in the step changes from step to step on the
  host (one process, SGD at a constant rate, no augmentation: the book's recipe) the whole-step graph.
* ``compile="on"`` compiles the forward pass and the loss (with CUDA graphs on GPUs); ``auto`` never
  compiles: the cold compile costs a 10-epoch recipe more than it saves, on the CPU and on an H200.

Numerics: compile changes the order of floating-point operations, bf16 their precision;
``tests/test_speed_paths.py`` checks that each step reaches the plain step's accuracy on real data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from cnnlab.device import cpu_has_native_bf16
from cnnlab.errors import ConfigError
from cnnlab.kernels.lenet import LeNetKernel, TorchPasses, native, unsupported_reason
from cnnlab.optim import build_optimizer, constant_rate
from cnnlab.train.config import TrainConfig, label

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_speed_settings(**settings: str) -> None:
    """Raise ConfigError naming the first of ``compile``, ``precision``, ``kernel``, ``channels_last``
    that is not one of its choices (the config's own, for a step chosen without a validated config)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, value in settings.items():
        choices = fields[name].metadata["choices"]
        if value not in choices:
            raise ConfigError(f"unknown {label(name)} {value!r}; choose one of {', '.join(choices)}")


def accuracy_count(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions, as a tensor on the logits' device (no sync)."""
    return (logits.argmax(dim=1) == y).sum()


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a run's metric sums: float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _one_line(exc: Exception) -> str:
    """``Type: first line of the message``, for a warning that names why a path was dropped."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first_line}"


def _nhwc(X: torch.Tensor) -> torch.Tensor:
    return X.contiguous(memory_format=torch.channels_last) if X.dim() == 4 else X


@dataclass(frozen=True)
class StepSettings:
    """What a step computes with, for the run's record."""

    precision: str = "fp32"        # "fp32" or "bf16"
    compile: bool = False
    cuda_graphs: bool = False
    channels_last: bool = False
    kernel: str = "off"            # "off", "lenet" (PyTorch passes) or "lenet+c" (C passes)
    note: str = ""                 # why a path asked for or expected is not in use

    def describe(self) -> str:
        parts = [f"compile={'on' if self.compile else 'off'}", f"precision={self.precision}",
                 f"cuda_graphs={'on' if self.cuda_graphs else 'off'}",
                 f"channels_last={'on' if self.channels_last else 'off'}", f"kernel={self.kernel}"]
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


class TrainStep:
    """One training step of ``model`` with ``optimizer``.

    ``step(X, y)`` runs forward, loss, backward and the optimizer's update and returns the batch's loss
    sum (mean loss x examples, in the metric sums' dtype) and its correct count, both tensors on the
    device (no host sync).  ``logits(X)`` is the model's output as this step computes it (layout,
    precision, kernel), for evaluation.  ``model`` (possibly wrapped by DDP) and ``optimizer`` are what a
    checkpoint saves; ``settings`` and ``reason`` say what runs and why.
    """

    def __init__(self, model: nn.Module, optimizer, settings: StepSettings = StepSettings()):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.reason = settings.describe()

    @property
    def module(self) -> nn.Module:
        """The bare model (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def loss_sum(loss: torch.Tensor, n: int) -> torch.Tensor:
        return loss.detach().to(sum_dtype(loss.device)) * n


def autocast_for(device: torch.device, precision: str, cache_enabled: bool = True) -> Callable[[], ContextManager]:
    """A factory of the autocast context for ``precision`` (a no-op context for fp32).

    ``cache_enabled=False`` where the step is captured as a CUDA graph (PyTorch's CUDA-graph notes:
    no autocast weight cache across a capture)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = PRECISION_DTYPES[precision]
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


class EagerStep(TrainStep):
    """PyTorch's own layers: ``precision`` (fp32 or bf16 autocast), ``channels_last`` inputs (the model's
    weights converted by whoever built it, before the optimizer), and with ``compile`` the forward pass
    and loss compiled (``mode="reduce-overhead"``, CUDA graphs, with ``cuda_graphs``).

    The last, partial batch of an epoch runs eagerly (same parameters, same numerics) instead of
    compiling a second graph for its shape; if compilation fails the step warns once and goes on eagerly.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer, settings: StepSettings = StepSettings(),
                 batch_size: int | None = None):
        super().__init__(model, optimizer, settings)
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        # No autocast weight cache where the step is captured as a CUDA graph.
        self.autocast = autocast_for(self.device, settings.precision, cache_enabled=not settings.cuda_graphs)
        self._compiled: Callable | None = None
        self.fallback_reason: str | None = None
        if settings.compile:
            mode = "reduce-overhead" if settings.cuda_graphs else None
            self._compiled = torch.compile(self.forward_loss, dynamic=False, mode=mode)

    @property
    def compiled(self) -> bool:
        """True while the compiled path is in use (False after a fallback)."""
        return self._compiled is not None

    def forward_loss(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and correct count in this step's layout and precision; no backward."""
        if self.settings.channels_last:
            X = _nhwc(X)
        with self.autocast():
            logits = self.model(X)
            loss = self.loss_fn(logits, y)
        return loss, accuracy_count(logits, y)

    def _forward_backward(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compiled is not None and X.shape[0] == self.batch_size:
            try:
                if self.settings.cuda_graphs:
                    # A new iteration begins: the previous step's graph outputs may be overwritten.
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

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct = self._forward_backward(X, y)
        self.optimizer.step()
        return self.loss_sum(loss, y.shape[0]), correct

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        # The bare module under DDP: evaluation syncs no gradients, and DDP's forward may broadcast
        # buffers, a collective that ranks with different numbers of test batches cannot all join.
        with self.autocast():
            return self.module(_nhwc(X) if self.settings.channels_last else X)

    def _fall_back(self, exc: Exception) -> None:
        self._compiled = None
        self.fallback_reason = _one_line(exc)
        warnings.warn(f"torch.compile failed ({self.fallback_reason}); training continues without it",
                      RuntimeWarning, stacklevel=4)
        for p in self.model.parameters():  # a failed compiled backward may have left partial gradients
            p.grad = None


class GraphStep(TrainStep):
    """A whole eager step (forward, loss, backward, SGD update) of a full batch as one CUDA graph.

    LeNet's step on a GPU is ~40 kernels of a few microseconds each, so launching them costs more
    than running them; replaying one captured graph costs one launch.  It captures PyTorch's own
    eager kernels (``eager``'s), so there is nothing to compile: capture takes milliseconds.

    A batch that is not graph-shaped (the last partial batch), or every batch after a failed capture,
    runs ``eager``'s ordinary step on the same parameters and optimizer state.  Three warm-up steps on
    a side stream (cuBLAS/cuDNN workspaces, algorithm choice) precede capture; parameters and optimizer
    state are restored afterwards, so training is exactly as if they had not run.  Valid for SGD (any
    momentum/Nesterov/weight decay) at a constant learning rate, which the graph bakes in.
    """

    WARMUP_STEPS = 3

    def __init__(self, eager: EagerStep, batch_size: int):
        super().__init__(eager.model, eager.optimizer, eager.settings)
        self.eager = eager
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed_reason: str | None = None

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.eager.logits(X)

    def _step(self, X, y):
        loss, correct = self.eager.forward_loss(X, y)
        loss.backward()
        self.optimizer.step()
        return self.loss_sum(loss, y.shape[0]), correct

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

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed_reason is not None or X.shape[0] != self.batch_size:
            return self.eager(X, y)
        if self.graph is None:
            try:
                self._capture(X, y)
            except Exception as exc:  # capture errors come from many layers (cuDNN, allocator, autograd)
                self.failed_reason = _one_line(exc)
                warnings.warn(f"CUDA graph capture failed ({self.failed_reason}); training continues without it",
                              RuntimeWarning, stacklevel=2)
                return self.eager(X, y)
        self.static_X.copy_(X)
        self.static_y.copy_(y)
        self.graph.replay()
        # Copies: the next replay overwrites the graph's outputs.
        return self.static_loss.clone(), self.static_correct.clone()


class KernelStep(TrainStep):
    """The hand-fused LeNet step (``cnnlab.kernels.lenet.LeNetKernel``): it computes in its own
    precision, so there is no autocast around it, in training or evaluation."""

    def __init__(self, model: nn.Module, optimizer, kernel, settings: StepSettings):
        super().__init__(model, optimizer, settings)
        self.kernel = kernel

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct = self.kernel.forward_backward(X, y)
        self.optimizer.step()
        return self.loss_sum(loss, y.shape[0]), correct

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.kernel.logits(X)


# ---- choosing the step: facts, then a plan, then the step ----------------------------------------
#
# describe_model and device_facts look at the network and the machine; plan_step decides from what
# they found and the config alone (pure: the same facts give the same plan anywhere, so every choice
# is tested as a table); build_step makes the plan's step.

@dataclass(frozen=True)
class ModelFacts:
    """What the choice of a step needs to know of a network (:func:`describe_model`); the defaults
    describe the book's LeNet."""

    has_conv: bool = True
    kernel_unsupported: str | None = None  # why the LeNet kernel cannot run it with its loss; None if it can
    input_size: int = 28                   # the side of the images it sees
    narrow_batch_norm: bool = False        # batch-normalises fewer than NHWC_MIN_NORM_CHANNELS channels


def describe_model(model: nn.Module, loss_fn: nn.Module, input_size: int = 28) -> ModelFacts:
    """``model`` (trained with ``loss_fn`` on ``input_size``-pixel images) as :func:`plan_step` sees it."""
    return ModelFacts(has_conv=any(isinstance(m, nn.Conv2d) for m in model.modules()),
                      kernel_unsupported=unsupported_reason(model, loss_fn), input_size=input_size,
                      narrow_batch_norm=narrow_batch_norm(model))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def compiler_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot produce code for ``device`` here, or None if it can.

    Inductor needs a C++ compiler for CPU code and Triton for CUDA code; without them the first
    compiled call fails deep inside PyTorch, so the choice checks first and says what is missing.
    ``CNNLAB_NO_COMPILE=1`` turns compilation off everywhere (e.g. to compare, or on a broken toolchain).
    """
    if _env_flag("CNNLAB_NO_COMPILE"):
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


NHWC_MIN_NORM_CHANNELS = 16
"""Channels-last pays on the CPU only if every 2-D batch norm has at least this many channels: measured
slower with 6 (the book's BN LeNet 0.81x, the zoo's ``lenet_bn`` 0.94x), faster with 16 and more
(``lenet_bn`` at 16/32 channels 1.37x, ``vgg_mini`` 1.31x; ``benchmarks/layouts.py``)."""


def narrow_batch_norm(model: nn.Module) -> bool:
    """True if ``model`` batch-normalises a feature map of fewer than :data:`NHWC_MIN_NORM_CHANNELS` channels."""
    return any(isinstance(m, nn.BatchNorm2d) and m.num_features < NHWC_MIN_NORM_CHANNELS for m in model.modules())


@dataclass(frozen=True)
class DeviceFacts:
    """What the choice of a step needs to know of the machine (:func:`device_facts`); the defaults
    describe one process on a CPU without native bf16."""

    type: str = "cpu"                      # the device's type: "cpu", "cuda", "mps"
    cuda_bf16: bool = False                # a CUDA device that computes in bf16
    cpu_native_bf16: bool = False          # a CPU with bf16 dot products in hardware (cnnlab.device)
    compiler_missing: str | None = None    # why torch.compile cannot build code for the device; None if it can
    distributed: bool = False              # one of the processes of a DDP run


def device_facts(device: torch.device, *, distributed: bool = False, compile_asked: bool = False) -> DeviceFacts:
    """The facts of ``device`` here.  The compiler is looked for only when ``compile_asked`` (looking
    imports ``torch._dynamo``, a second of a run that does not compile)."""
    return DeviceFacts(type=device.type,
                       cuda_bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
                       cpu_native_bf16=device.type == "cpu" and cpu_has_native_bf16(),
                       compiler_missing=compiler_unavailable_reason(device) if compile_asked else None,
                       distributed=distributed)


@dataclass(frozen=True)
class StepPlan:
    """What a run's step computes with, decided by :func:`plan_step` and made by :func:`build_step`."""

    precision: str = "fp32"                # "fp32" or "bf16"
    kernel: bool = False                   # the LeNet kernel (its C passes where they load, chosen when built)
    kernel_refused: str | None = None      # why the kernel does not run (None where it runs, or with kernel off)
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False              # compiled: compile's reduce-overhead mode; eager: a GraphStep
    notes: tuple[str, ...] = ()            # why a path asked for is not in use


def plan_step(config: Any, model: ModelFacts, device: DeviceFacts, *, fixed_rate: bool | None = None) -> StepPlan:
    """The step for a network described by ``model`` on ``device`` under ``config`` (its ``compile``,
    ``precision``, ``kernel`` and ``channels_last`` settings, and its optimizer, schedule and
    augmentation, which decide whether the whole step can be one CUDA graph).

    ``auto`` turns a path on only where it measured faster with the recipe's accuracy (module
    docstring); ``on`` where a path is impossible falls back with a note, not an error, so a config
    written on one machine still runs on another.  ``fixed_rate`` says the learning rate never changes
    during the run (default: the config's schedule is constant), which a whole-step CUDA graph needs.
    Pure: it reads its arguments and nothing else.
    """
    compile, precision, kernel, channels_last = config.compile, config.precision, config.kernel, config.channels_last
    check_speed_settings(compile=compile, precision=precision, kernel=kernel, channels_last=channels_last)
    if fixed_rate is None:
        fixed_rate = constant_rate(config.schedule, config.warmup_epochs)
    if precision == "bf16" and device.type == "mps":
        raise ConfigError("precision bf16 is not supported on mps; use --precision fp32")
    notes = []
    kernel_refused = None
    if kernel != "off":
        if device.type != "cpu":
            kernel_refused = f"the LeNet kernel is for CPUs, not {device.type}"
        elif device.distributed:
            kernel_refused = "the LeNet kernel does not run under DDP"
        elif compile == "on":
            kernel_refused = "--compile on asked for the compiled step instead of the LeNet kernel"
        elif model.input_size != 28:
            kernel_refused = f"the LeNet kernel is for 28x28 images, not {model.input_size}x{model.input_size}"
        else:
            kernel_refused = model.kernel_unsupported
        if kernel == "on" and kernel_refused is not None:
            notes.append(f"kernel unavailable: {kernel_refused}")
    use_kernel = kernel != "off" and kernel_refused is None
    # Channels-last (NHWC) convolutions: on a CPU 1.3-1.9x faster per step for the zoo's networks
    # (benchmarks/layouts.py), but not where batch norm normalises a few channels: PyTorch's NHWC batch
    # norm over 6 channels took 3x its NCHW time, and the book's BN LeNet a 1.2x slower step; the kernel
    # has its own layout.
    use_cl = False
    if channels_last == "on":
        use_cl = model.has_conv and not use_kernel
        if not use_cl:
            notes.append("channels-last unused: " + ("the LeNet kernel has its own layout" if use_kernel
                                                      else "no convolutions"))
    elif channels_last == "auto":
        use_cl = device.type == "cpu" and model.has_conv and not use_kernel and not model.narrow_batch_norm
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if device.cuda_bf16 else "fp32"
        else:
            # bf16 on CPUs with bf16 dot products, for the kernel and for channels-last convolutions;
            # NCHW autocast measured slower than fp32 unless compiled, and emulated bf16 is slower everywhere.
            native_bf16 = device.type == "cpu" and device.cpu_native_bf16
            precision = "bf16" if (use_kernel or use_cl) and native_bf16 else "fp32"
    use_compile = compile == "on" and device.compiler_missing is None
    if compile == "on" and not use_compile:
        notes.append(f"compile unavailable: {device.compiler_missing}")
    # The whole step as one CUDA graph where nothing in it changes from step to step on the host; with
    # compile, graphs come through compile's reduce-overhead mode instead.
    graphable = not device.distributed and config.optimizer == "sgd" and fixed_rate and not config.augment
    return StepPlan(precision=precision, kernel=use_kernel, kernel_refused=kernel_refused,
                    channels_last=use_cl, compile=use_compile,
                    cuda_graphs=device.type == "cuda" and (use_compile or graphable), notes=tuple(notes))


def _kernel_passes(model: nn.Module, dtype: torch.dtype):
    """The LeNet kernel's passes for ``dtype`` (C where they build, else PyTorch's) and why not C."""
    if _env_flag("CNNLAB_NO_NATIVE"):
        return TorchPasses(), "CNNLAB_NO_NATIVE is set"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return TorchPasses(), "the C passes take float32 parameters"
    if dtype not in native.STORAGE:
        return TorchPasses(), f"no C passes for {dtype}"
    passes, reason = native.load(native.STORAGE[dtype])
    return (passes, None) if passes is not None else (TorchPasses(), reason)


def inference_forward(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward pass for scoring, computed the fastest way that keeps its float32 function:
    on a CPU, for a LeNet-shaped float32 network, the LeNet kernel's forward in float32 (the same
    function as ``model(X)`` up to rounding, in fewer, larger operations; the C passes where they
    build), falling back to ``model`` for batches that are not 1x28x28; elsewhere ``model`` itself."""
    if device.type != "cpu" or unsupported_reason(model) is not None \
            or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return model
    passes, _ = _kernel_passes(model, torch.float32)
    kernel = LeNetKernel(model, torch.float32, passes)

    def forward(X: torch.Tensor) -> torch.Tensor:
        if isinstance(X, torch.Tensor) and X.shape[1:] == (1, 28, 28) and X.dtype == torch.float32:
            return kernel.logits(X)
        return model(X)

    return forward


def _optimizer(config: Any, model: nn.Module):
    return build_optimizer(model, config.optimizer, config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov,
                           scheduled=not constant_rate(config.schedule, config.warmup_epochs))


def build_step(plan: StepPlan, model: nn.Module, config: Any, *, loss_fn: nn.Module, batch_size: int,
               dist: Any = None) -> TrainStep:
    """The step ``plan`` describes, for ``model`` (already on its device), with the optimizer of
    ``config``'s settings.  The model is converted to channels-last when the step computes in it, before
    the optimizer and DDP see its parameters; ``dist`` wraps it for distributed training.  The kernel's
    C passes are built here (or found in the cache); where they cannot be, the kernel runs its PyTorch
    passes and the step's reason says why."""
    if plan.kernel:
        dtype = PRECISION_DTYPES[plan.precision]
        passes, missing = _kernel_passes(model, dtype)
        notes = plan.notes + ((f"the kernel's C passes are unavailable: {missing}",) if missing is not None else ())
        settings = StepSettings(precision=plan.precision, kernel="lenet+c" if passes.name == "c" else "lenet",
                                note="; ".join(notes))
        return KernelStep(model, _optimizer(config, model), LeNetKernel(model, dtype, passes), settings)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)   # before the optimizer and DDP see the parameters
    optimizer = _optimizer(config, model)
    trained = dist.wrap(model) if dist is not None else model
    settings = StepSettings(precision=plan.precision, compile=plan.compile, cuda_graphs=plan.cuda_graphs,
                            channels_last=plan.channels_last, note="; ".join(plan.notes))
    eager = EagerStep(trained, loss_fn, optimizer, settings, batch_size)
    if plan.cuda_graphs and not plan.compile:
        return GraphStep(eager, batch_size)
    return eager


def choose_step(config: Any, model: nn.Module, device: torch.device, *, loss_fn: nn.Module,
                batch_size: int, dist: Any = None, fixed_rate: bool | None = None,
                input_size: int = 28) -> TrainStep:
    """The training step for ``model`` (already on ``device``) under ``config``, with ``step.reason``
    saying what runs and why: :func:`plan_step` of the model's and the machine's facts, made by
    :func:`build_step`.  ``input_size`` is the side of the images the model sees; ``dist`` wraps the
    model for distributed training; ``fixed_rate`` as :func:`plan_step`'s."""
    facts = device_facts(device, distributed=dist is not None, compile_asked=config.compile == "on")
    plan = plan_step(config, describe_model(model, loss_fn, input_size), facts, fixed_rate=fixed_rate)
    return build_step(plan, model, config, loss_fn=loss_fn, batch_size=batch_size, dist=dist)
