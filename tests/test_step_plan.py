"""Which training step a run gets: ``plan_step`` as a table of machines, networks and settings against
plans written out by hand, then ``describe_model`` and ``build_step``, the two parts around it.

``plan_step`` reads only its arguments, so a CUDA GPU, an MPS device, a CPU with native bf16, a
missing compiler or a distributed run are all described here, on any machine.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models import create
from cnnlab.train.config import TrainConfig
from cnnlab.train.steps import (DeviceFacts, EagerStep, GraphStep, KernelStep, ModelFacts, StepPlan, StepSettings,
                                build_step, describe_model, plan_step)
from conftest import OneProcess

# The machines.
CPU = DeviceFacts(type="cpu")
CPU_BF16 = DeviceFacts(type="cpu", cpu_native_bf16=True)
CPU_DDP = DeviceFacts(type="cpu", distributed=True)
CPU_NO_CXX = DeviceFacts(type="cpu", compiler_missing="no C++ compiler (g++, c++ or clang++) on PATH")
CUDA = DeviceFacts(type="cuda", cuda_bf16=True)
CUDA_NO_BF16 = DeviceFacts(type="cuda")
CUDA_DDP = DeviceFacts(type="cuda", cuda_bf16=True, distributed=True)
CUDA_NO_TRITON = DeviceFacts(type="cuda", cuda_bf16=True, compiler_missing="Triton is not installed")
MPS = DeviceFacts(type="mps")
MPS_ON_BF16_CPU = DeviceFacts(type="mps", cpu_native_bf16=True)   # an Apple M2: its CPU has bf16, MPS is not asked

# The networks (what describe_model says of them).
LENET = ModelFacts(has_conv=True, kernel_unsupported=None, input_size=28)
LENET_32 = ModelFacts(has_conv=True, kernel_unsupported=None, input_size=32)
MAX_POOLING = "pooling other than 2x2 average, or mixed activations"
LENET_MAX = ModelFacts(has_conv=True, kernel_unsupported=MAX_POOLING)
NOT_LENET = "not LeNet's layer sequence"
VGG = ModelFacts(has_conv=True, kernel_unsupported=NOT_LENET)
MLP = ModelFacts(has_conv=False, kernel_unsupported=NOT_LENET)

# Why the kernel is refused.
ON_CUDA = "the LeNet kernel is for CPUs, not cuda"
ON_MPS = "the LeNet kernel is for CPUs, not mps"
UNDER_DDP = "the LeNet kernel does not run under DDP"
COMPILED = "--compile on asked for the compiled step instead of the LeNet kernel"
AT_32 = "the LeNet kernel is for 28x28 images, not 32x32"


def case(name, settings, model, device, expected, fixed_rate=None):
    return pytest.param(settings, model, device, fixed_rate, expected, id=name)


CASES = [
    # ---- the CPU: the kernel for LeNet, channels-last for other convolutional networks -------------
    case("cpu recipe: the kernel in fp32", {}, LENET, CPU, StepPlan(precision="fp32", kernel=True)),
    case("cpu with native bf16: the kernel in bf16", {}, LENET, CPU_BF16, StepPlan(precision="bf16", kernel=True)),
    case("cpu, fp32 asked: the kernel in fp32", {"precision": "fp32"}, LENET, CPU_BF16,
         StepPlan(precision="fp32", kernel=True)),
    case("cpu, another convnet: channels-last fp32", {}, VGG, CPU,
         StepPlan(precision="fp32", kernel_refused=NOT_LENET, channels_last=True)),
    case("cpu with native bf16, another convnet: channels-last bf16", {}, VGG, CPU_BF16,
         StepPlan(precision="bf16", kernel_refused=NOT_LENET, channels_last=True)),
    case("cpu with native bf16, NCHW: fp32 (NCHW autocast is slower)", {"channels_last": "off"}, VGG, CPU_BF16,
         StepPlan(precision="fp32", kernel_refused=NOT_LENET)),
    case("cpu, bf16 asked without native bf16: bf16", {"precision": "bf16"}, VGG, CPU,
         StepPlan(precision="bf16", kernel_refused=NOT_LENET, channels_last=True)),
    case("cpu, no convolutions: the plain step", {}, MLP, CPU_BF16,
         StepPlan(precision="fp32", kernel_refused=NOT_LENET)),
    # ---- --kernel: on, auto, off, and each reason it is refused -------------------------------------
    case("kernel off: channels-last instead", {"kernel": "off"}, LENET, CPU,
         StepPlan(precision="fp32", channels_last=True)),
    case("kernel off with native bf16: channels-last bf16", {"kernel": "off"}, LENET, CPU_BF16,
         StepPlan(precision="bf16", channels_last=True)),
    case("kernel on: the kernel", {"kernel": "on"}, LENET, CPU, StepPlan(precision="fp32", kernel=True)),
    case("kernel on, unsupported network: a note", {"kernel": "on"}, LENET_MAX, CPU,
         StepPlan(precision="fp32", kernel_refused=MAX_POOLING, channels_last=True,
                  notes=(f"kernel unavailable: {MAX_POOLING}",))),
    case("kernel auto, unsupported network: no note", {}, LENET_MAX, CPU,
         StepPlan(precision="fp32", kernel_refused=MAX_POOLING, channels_last=True)),
    case("kernel on, 32-pixel images: a note", {"kernel": "on"}, LENET_32, CPU,
         StepPlan(precision="fp32", kernel_refused=AT_32, channels_last=True,
                  notes=(f"kernel unavailable: {AT_32}",))),
    case("kernel auto, 32-pixel images: no note", {}, LENET_32, CPU,
         StepPlan(precision="fp32", kernel_refused=AT_32, channels_last=True)),
    case("kernel on under DDP: a note", {"kernel": "on"}, LENET, CPU_DDP,
         StepPlan(precision="fp32", kernel_refused=UNDER_DDP, channels_last=True,
                  notes=(f"kernel unavailable: {UNDER_DDP}",))),
    case("kernel auto under DDP: channels-last", {}, LENET, CPU_DDP,
         StepPlan(precision="fp32", kernel_refused=UNDER_DDP, channels_last=True)),
    case("kernel on with compile on: compiled, a note", {"kernel": "on", "compile": "on"}, LENET, CPU,
         StepPlan(precision="fp32", kernel_refused=COMPILED, channels_last=True, compile=True,
                  notes=(f"kernel unavailable: {COMPILED}",))),
    case("kernel on, cuda: a note", {"kernel": "on"}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True,
                  notes=(f"kernel unavailable: {ON_CUDA}",))),
    case("kernel on, mps: a note", {"kernel": "on"}, LENET, MPS,
         StepPlan(precision="fp32", kernel_refused=ON_MPS, notes=(f"kernel unavailable: {ON_MPS}",))),
    # ---- --channels-last: on, auto, off; with and without convolutions ------------------------------
    case("channels-last on, no convolutions: a note", {"channels_last": "on", "kernel": "off"}, MLP, CPU,
         StepPlan(precision="fp32", notes=("channels-last unused: no convolutions",))),
    case("channels-last auto, no convolutions: no note", {"kernel": "off"}, MLP, CPU, StepPlan(precision="fp32")),
    case("channels-last on with the kernel: a note", {"channels_last": "on"}, LENET, CPU_BF16,
         StepPlan(precision="bf16", kernel=True,
                  notes=("channels-last unused: the LeNet kernel has its own layout",))),
    case("channels-last off, kernel off: the plain step", {"channels_last": "off", "kernel": "off"}, LENET, CPU_BF16,
         StepPlan(precision="fp32")),
    case("channels-last on, cuda", {"channels_last": "on"}, VGG, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, channels_last=True, cuda_graphs=True)),
    case("channels-last auto, cuda: off", {}, VGG, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True)),
    # ---- --compile: on, off, unavailable ------------------------------------------------------------
    case("compile on, cpu", {"compile": "on"}, VGG, CPU,
         StepPlan(precision="fp32", kernel_refused=COMPILED, channels_last=True, compile=True)),
    case("compile on, LeNet, cpu: compiled, not the kernel", {"compile": "on"}, LENET, CPU,
         StepPlan(precision="fp32", kernel_refused=COMPILED, channels_last=True, compile=True)),
    case("compile on, no C++ compiler: eager, a note", {"compile": "on"}, LENET, CPU_NO_CXX,
         StepPlan(precision="fp32", kernel_refused=COMPILED, channels_last=True,
                  notes=("compile unavailable: no C++ compiler (g++, c++ or clang++) on PATH",))),
    case("compile off: the kernel", {"compile": "off"}, LENET, CPU, StepPlan(precision="fp32", kernel=True)),
    case("compile on, cuda: compiled with CUDA graphs", {"compile": "on"}, VGG, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, compile=True, cuda_graphs=True)),
    case("compile on, cuda, AdamW: compiled with CUDA graphs", {"compile": "on", "optimizer": "adamw", "lr": 1e-3},
         VGG, CUDA, StepPlan(precision="bf16", kernel_refused=ON_CUDA, compile=True, cuda_graphs=True)),
    case("compile on, cuda without Triton, AdamW: eager, a note", {"compile": "on", "optimizer": "adamw", "lr": 1e-3},
         VGG, CUDA_NO_TRITON,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, notes=("compile unavailable: Triton is not installed",))),
    case("compile on, cuda without Triton, the recipe: the whole-step graph", {"compile": "on"}, VGG, CUDA_NO_TRITON,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True,
                  notes=("compile unavailable: Triton is not installed",))),
    # ---- CUDA: bf16 where supported; the whole-step graph where nothing changes on the host ----------
    case("cuda recipe: bf16, the whole-step graph", {}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True)),
    case("cuda without bf16: fp32", {}, LENET, CUDA_NO_BF16,
         StepPlan(precision="fp32", kernel_refused=ON_CUDA, cuda_graphs=True)),
    case("cuda without bf16, bf16 asked: bf16", {"precision": "bf16"}, LENET, CUDA_NO_BF16,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True)),
    case("cuda, kernel off: no refusal", {"kernel": "off"}, LENET, CUDA,
         StepPlan(precision="bf16", cuda_graphs=True)),
    case("cuda, momentum: graphable", {"momentum": 0.9}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA, cuda_graphs=True)),
    case("cuda, cosine schedule: not graphable", {"schedule": "cosine"}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA)),
    case("cuda, warm-up: not graphable", {"warmup_epochs": 1.0}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA)),
    case("cuda, rate set by the caller: not graphable", {}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA), fixed_rate=False),
    case("cuda, AdamW: not graphable", {"optimizer": "adamw", "lr": 1e-3}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA)),
    case("cuda, augmentation: not graphable", {"augment": ["flip"]}, LENET, CUDA,
         StepPlan(precision="bf16", kernel_refused=ON_CUDA)),
    case("cuda, DDP: not graphable", {}, LENET, CUDA_DDP, StepPlan(precision="bf16", kernel_refused=ON_CUDA)),
    # ---- MPS: fp32 --------------------------------------------------------------------------------
    case("mps: fp32", {}, LENET, MPS, StepPlan(precision="fp32", kernel_refused=ON_MPS)),
    case("mps, channels-last on, a CPU with bf16: fp32", {"channels_last": "on"}, VGG, MPS_ON_BF16_CPU,
         StepPlan(precision="fp32", kernel_refused=ON_MPS, channels_last=True)),
]


@pytest.mark.parametrize("settings, model, device, fixed_rate, expected", CASES)
def test_plan(settings, model, device, fixed_rate, expected):
    assert plan_step(TrainConfig(**settings), model, device, fixed_rate=fixed_rate) == expected


def test_bf16_on_mps_is_refused():
    with pytest.raises(ConfigError, match="precision bf16 is not supported on mps; use --precision fp32"):
        plan_step(TrainConfig(precision="bf16"), LENET, MPS)


@pytest.mark.parametrize("setting, value, label", [
    ("compile", "fast", "compile setting"), ("precision", "fp8", "precision"), ("kernel", "fused", "kernel setting"),
    ("channels_last", "nhwc", "channels-last setting")])
def test_unknown_settings_are_refused(setting, value, label):
    with pytest.raises(ConfigError, match=f"unknown {label} '{value}'"):
        plan_step(TrainConfig(**{setting: value}), LENET, CPU)


# ---- describe_model: what plan_step is told of a network ---------------------------------------------

@pytest.mark.parametrize("model, loss_fn, size, expected", [
    (create("lenet"), nn.CrossEntropyLoss(), 28, LENET),
    (create("lenet", activation="relu"), nn.CrossEntropyLoss(), 32, LENET_32),
    (create("lenet", pooling="max"), nn.CrossEntropyLoss(), 28, LENET_MAX),
    (create("lenet"), nn.CrossEntropyLoss(label_smoothing=0.1), 28,
     ModelFacts(kernel_unsupported="cross-entropy with label smoothing, class weights or a non-mean reduction")),
    (create("lenet_bn"), nn.CrossEntropyLoss(), 28, ModelFacts(kernel_unsupported="batch norm (its statistics are "
                                                                                   "not fused)", narrow_batch_norm=True)),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), nn.CrossEntropyLoss(), 28, MLP),
], ids=["lenet", "relu lenet at 32", "max pooling", "label smoothing", "batch norm", "no convolutions"])
def test_describe_model(model, loss_fn, size, expected):
    assert describe_model(model, loss_fn, size) == expected


# ---- build_step: the plan's step, and nothing else ---------------------------------------------------


def build(plan, model=None, dist=None, **settings):
    model = create("lenet") if model is None else model
    return build_step(plan, model, TrainConfig(**settings), loss_fn=nn.CrossEntropyLoss(), batch_size=64, dist=dist)


def test_the_plain_plan_builds_the_plain_step():
    step = build(StepPlan())
    assert type(step) is EagerStep and step.settings == StepSettings()
    assert not step.model[3].weight.is_contiguous(memory_format=torch.channels_last)    # conv2: 6 channels in


def test_a_channels_last_plan_converts_the_weights_before_the_optimizer_sees_them():
    step = build(StepPlan(precision="bf16", channels_last=True, notes=("a", "b")))
    assert type(step) is EagerStep
    assert step.settings == StepSettings(precision="bf16", channels_last=True, note="a; b")
    conv2 = step.optimizer.param_groups[0]["params"][2]
    assert conv2 is step.model[3].weight and conv2.is_contiguous(memory_format=torch.channels_last)


def test_an_eager_cuda_graphs_plan_builds_the_whole_step_graph():
    # Capture happens at the first call: building needs no GPU.
    step = build(StepPlan(cuda_graphs=True))
    assert isinstance(step, GraphStep) and step.settings == StepSettings(cuda_graphs=True)


def test_a_kernel_plan_builds_the_kernel_with_the_plan_s_precision_and_notes(monkeypatch):
    monkeypatch.setenv("CNNLAB_NO_NATIVE", "1")    # the PyTorch passes: nothing is compiled
    step = build(StepPlan(precision="bf16", kernel=True, notes=("channels-last unused: the LeNet kernel has its "
                                                               "own layout",)))
    assert isinstance(step, KernelStep) and step.kernel.dtype == torch.bfloat16
    assert step.reason == ("compile=off, precision=bf16, cuda_graphs=off, channels_last=off, kernel=lenet "
                           "(channels-last unused: the LeNet kernel has its own layout; the kernel's C passes are "
                           "unavailable: CNNLAB_NO_NATIVE is set)")


def test_a_distributed_build_wraps_the_model():
    dist = OneProcess()
    step = build(StepPlan(), dist=dist, optimizer="adamw", lr=1e-3)
    assert dist.wrapped == [step.model] and isinstance(step.optimizer, torch.optim.AdamW)


def test_channels_last_is_not_chosen_for_narrow_batch_norm():
    """Batch norm over fewer than 16 channels measured slower in NHWC on the CPU: auto leaves it NCHW."""
    config = TrainConfig()
    narrow = ModelFacts(kernel_unsupported="batch norm", narrow_batch_norm=True)
    wide = ModelFacts(kernel_unsupported="batch norm")
    cpu = DeviceFacts(type="cpu", cpu_native_bf16=True)
    assert not plan_step(config, narrow, cpu).channels_last and plan_step(config, narrow, cpu).precision == "fp32"
    assert plan_step(config, wide, cpu).channels_last and plan_step(config, wide, cpu).precision == "bf16"
