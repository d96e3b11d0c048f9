"""The fast training paths (compile, bf16 autocast, CUDA graphs) learn what the plain path learns.

Accuracy is checked on real Fashion-MNIST (6,000 training / 2,000 test images).  LeNet's sigmoid
recipe needs ~500 full-size steps to leave chance level, too long for a test, so these runs use the
same LeNet with ReLU activations and SGD lr 0.1 with momentum, which learns in three short epochs;
the paths under test do not depend on the activation.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnlab.data import load_split
from cnnlab.data.loader import BatchIterator
from cnnlab.errors import ConfigError
from cnnlab.models import create
from cnnlab.train.engine import Trainer, init_weights
from cnnlab.train.fast import FastStep, compiler_unavailable_reason, plan_speed

BATCH = 64
BAND = 0.04  # two short runs with different rounding differ by about this much at most on 2,000 images


def relu_lenet() -> nn.Module:
    model = create("lenet")
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Sigmoid):
            model[i] = nn.ReLU()
    return model


def fit(fashion_dir, device, compile="off", precision="fp32", epochs=3, kernel="off"):
    x, y = load_split("fashion-mnist", "train", fashion_dir, download=False)
    tx, ty = load_split("fashion-mnist", "test", fashion_dir, download=False)
    train = BatchIterator(x[:6000], y[:6000], BATCH, shuffle=True, seed=0, device=device)
    test = BatchIterator(tx[:2000], ty[:2000], 1000, device=device)
    torch.manual_seed(0)
    model = relu_lenet()
    init_weights(model)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    plan = plan_speed(device, compile, precision, kernel, model=model, loss_fn=loss_fn)
    fast = FastStep(model, loss_fn, plan, BATCH)
    trainer = Trainer(model, optimizer, train, test, epochs=epochs, device=device, loss_fn=loss_fn,
                      forward_backward=fast.forward_backward, autocast=fast.autocast,
                      eval_forward=fast.eval_forward)
    return trainer.fit(), fast


@pytest.fixture(scope="module")
def plain_cpu_acc(request):
    from tests.conftest import shared_dataset_dir

    result, _ = fit(shared_dataset_dir("fashion-mnist"), torch.device("cpu"))
    return result["test_acc"]


def test_plain_path_learns(plain_cpu_acc):
    # The band below means something only if the plain path is far above chance (0.1).
    assert plain_cpu_acc > 0.6


def test_bf16_autocast_on_cpu_matches_plain_accuracy(fashion_dir, plain_cpu_acc):
    result, fast = fit(fashion_dir, torch.device("cpu"), precision="bf16")
    assert fast.plan.precision == "bf16"
    assert abs(result["test_acc"] - plain_cpu_acc) <= BAND


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lenet_kernel_matches_plain_accuracy(fashion_dir, plain_cpu_acc, precision):
    # Training and evaluation both run through the kernel (fast.eval_forward).
    result, fast = fit(fashion_dir, torch.device("cpu"), precision=precision, kernel="on")
    assert fast.plan.kernel and fast.kernel is not None and fast.eval_forward is not None
    assert fast.kernel.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert abs(result["test_acc"] - plain_cpu_acc) <= BAND


@pytest.mark.skipif(compiler_unavailable_reason(torch.device("cpu")) is not None,
                    reason="torch.compile cannot build CPU code here")
def test_compiled_step_on_cpu_matches_plain_accuracy(fashion_dir, plain_cpu_acc):
    # The one test that really compiles (inductor, C++): it costs 10-40 s cold, little once cached.
    result, fast = fit(fashion_dir, torch.device("cpu"), compile="on")
    assert fast.compiled, fast.fallback_reason
    assert abs(result["test_acc"] - plain_cpu_acc) <= BAND


def test_auto_plan_on_cpu_is_the_plain_path():
    plan = plan_speed(torch.device("cpu"))
    assert (plan.compile, plan.precision, plan.cuda_graphs, plan.kernel) == (False, "fp32", False, False)


def test_auto_plan_for_the_seed_lenet_on_cpu_is_the_kernel():
    from cnnlab.train.lenet_kernel import cpu_has_native_bf16

    plan = plan_speed(torch.device("cpu"), model=create("lenet"), loss_fn=nn.CrossEntropyLoss())
    assert plan.kernel and not plan.compile
    assert plan.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert "kernel=lenet" in plan.describe()


@pytest.mark.parametrize("why, kwargs", [
    ("off", dict(kernel="off")),
    ("DDP", dict(distributed=True)),
    ("compile", dict(compile="on")),
    ("label smoothing", dict(loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))),
    ("max pooling", dict(model=create("lenet", pooling="max"))),
    ("batch norm", dict(model=create("lenet_bn"))),
    ("another network", dict(model=create("vgg_mini"))),
])
def test_auto_plan_skips_the_kernel_where_it_does_not_apply(why, kwargs):
    args = {"model": create("lenet"), "loss_fn": nn.CrossEntropyLoss(), **kwargs}
    plan = plan_speed(torch.device("cpu"), **args)
    assert not plan.kernel, why
    # auto on CPU without the kernel keeps fp32: autocast bf16 is slower than fp32 uncompiled.
    assert plan.precision == "fp32"


def test_kernel_requested_where_it_cannot_run_falls_back_with_a_note():
    plan = plan_speed(torch.device("cpu"), kernel="on", model=create("lenet", pooling="max"),
                      loss_fn=nn.CrossEntropyLoss())
    assert not plan.kernel
    assert "kernel unavailable" in plan.note and "pooling" in plan.note


def test_compile_requested_without_a_compiler_falls_back_with_a_note(monkeypatch):
    monkeypatch.setenv("CNNLAB_NO_COMPILE", "1")
    plan = plan_speed(torch.device("cpu"), compile="on")
    assert not plan.compile
    assert "CNNLAB_NO_COMPILE" in plan.describe()


def test_unknown_settings_are_config_errors():
    with pytest.raises(ConfigError, match="compile setting"):
        plan_speed(torch.device("cpu"), compile="fast")
    with pytest.raises(ConfigError, match="precision"):
        plan_speed(torch.device("cpu"), precision="fp8")
    with pytest.raises(ConfigError, match="kernel setting"):
        plan_speed(torch.device("cpu"), kernel="fused")


def _gradients(model):
    return [p.grad.clone() for p in model.parameters()]


def test_failed_compilation_falls_back_to_the_plain_step(monkeypatch):
    """A compiler that fails at the first call: one warning, then the exact eager gradients."""
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("inductor: no working C++ compiler\nlong trace")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = create("lenet")
    X, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    reference = nn.CrossEntropyLoss()(model(X), y)
    reference.backward()
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)

    plan = plan_speed(torch.device("cpu"), compile="on")
    assert plan.compile  # g++ is present in CI; the failure comes from torch.compile itself
    fast = FastStep(model, nn.CrossEntropyLoss(), plan, batch_size=8)
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler"):
        loss, correct = fast.forward_backward(X, y)
    assert not fast.compiled
    assert torch.equal(loss, reference.detach())
    assert int(correct) == int((model(X).argmax(1) == y).sum())
    for got, want in zip(_gradients(model), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_last_partial_batch_does_not_reach_the_compiled_graph(monkeypatch):
    """Compiled with dynamic=False, a new batch shape would recompile; the partial batch runs eagerly."""
    shapes = []

    def recording_compile(fn, **kwargs):
        assert kwargs.get("dynamic") is False

        def compiled(X, y):
            shapes.append(tuple(X.shape))
            return fn(X, y)
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (100,))
    model = create("lenet")
    fast = FastStep(model, nn.CrossEntropyLoss(), plan_speed(torch.device("cpu"), compile="on"), batch_size=32)
    batches = BatchIterator(images, labels, 32, shuffle=True)
    sizes = []
    for X, yb in batches.batches(0):
        fast.forward_backward(X, yb)
        sizes.append(X.shape[0])
    assert sizes == [32, 32, 32, 4]
    assert shapes == [(32, 1, 28, 28)] * 3


def test_cli_records_the_speed_plan(fashion_dir, tmp_path, monkeypatch):
    from cnnlab.cli.main import main

    run_dir = tmp_path / "run"
    status = main(["train", "--data-dir", str(fashion_dir), "--epochs", "1", "--train-limit", "512",
                   "--test-limit", "256", "--device", "cpu", "--precision", "bf16", "--compile", "off",
                   "--no-progress", "--run-dir", str(run_dir)])
    assert status == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["precision"] == "bf16"
    assert config["speed"].startswith("compile=off, precision=bf16")
    assert config["speed"].endswith("kernel=lenet")   # the seed's LeNet on CPU: the fused step


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_gpu_plans():
    """auto: eager bf16 (a cold compile costs the recipe more than it saves); on: CUDA graphs."""
    auto = plan_speed(torch.device("cuda"))
    assert not auto.compile and auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    if compiler_unavailable_reason(torch.device("cuda")) is None:
        on = plan_speed(torch.device("cuda"), compile="on")
        assert on.compile and on.cuda_graphs


@pytest.mark.gpu
@cuda
def test_gpu_fast_path_matches_plain_accuracy(fashion_dir):
    device = torch.device("cuda")
    plain, _ = fit(fashion_dir, device)
    fast_result, fast = fit(fashion_dir, device, compile="on", precision="auto")
    assert plain["test_acc"] > 0.6
    if compiler_unavailable_reason(device) is None:
        assert fast.compiled, fast.fallback_reason
    assert abs(fast_result["test_acc"] - plain["test_acc"]) <= BAND
