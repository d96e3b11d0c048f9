"""The fast training paths (compile, bf16 autocast, CUDA graphs) learn what the plain path learns.

Accuracy is checked on real Fashion-MNIST (6,000 training / 2,000 test images).  LeNet's sigmoid
recipe needs ~500 full-size steps to leave chance level, too long for a test, so these runs use the
same LeNet with ReLU activations and SGD lr 0.1 with momentum, which learns in three short epochs;
the paths under test do not depend on the activation.
"""

from __future__ import annotations

import json
import warnings

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


def fit(fashion_dir, device, compile="off", precision="fp32", epochs=3, kernel="off", channels_last="off"):
    x, y = load_split("fashion-mnist", "train", fashion_dir, download=False)
    tx, ty = load_split("fashion-mnist", "test", fashion_dir, download=False)
    train = BatchIterator(x[:6000], y[:6000], BATCH, shuffle=True, seed=0, device=device)
    test = BatchIterator(tx[:2000], ty[:2000], 1000, device=device)
    torch.manual_seed(0)
    model = relu_lenet()
    init_weights(model)
    model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    plan = plan_speed(device, compile, precision, kernel, model=model, loss_fn=loss_fn, channels_last=channels_last)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
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
def test_channels_last_matches_plain_accuracy(fashion_dir, plain_cpu_acc, precision):
    result, fast = fit(fashion_dir, torch.device("cpu"), precision=precision, channels_last="on")
    assert fast.plan.channels_last and not fast.plan.kernel and fast.plan.precision == precision
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
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
    assert not plan.channels_last          # the kernel has its own layout


def test_auto_plan_for_other_convnets_on_cpu_is_channels_last():
    from cnnlab.train.lenet_kernel import cpu_has_native_bf16

    plan = plan_speed(torch.device("cpu"), model=create("vgg_mini"), loss_fn=nn.CrossEntropyLoss())
    assert plan.channels_last and not plan.kernel
    assert plan.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert not plan_speed(torch.device("cpu"), model=mlp, loss_fn=nn.CrossEntropyLoss()).channels_last
    off = plan_speed(torch.device("cpu"), model=create("vgg_mini"), loss_fn=nn.CrossEntropyLoss(), channels_last="off")
    assert not off.channels_last


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
    plan = plan_speed(torch.device("cpu"), **{**args, "channels_last": "off"})
    assert not plan.kernel, why
    # auto on CPU without the kernel or channels-last keeps fp32: NCHW autocast bf16 is slower than fp32.
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
    with pytest.raises(ConfigError, match="channels-last setting"):
        plan_speed(torch.device("cpu"), channels_last="nhwc")


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
    # The seed's LeNet on CPU: the fused step, with its C passes where a C compiler exists.
    from cnnlab.train import native

    has_c = native.load("bf16")[0] is not None
    if has_c:
        assert config["speed"].endswith("kernel=lenet+c")
    else:
        assert "kernel=lenet (the kernel's C passes are unavailable" in config["speed"]
    # Without them (here: turned off) the run says so and trains with the kernel's PyTorch passes.
    monkeypatch.setenv("CNNLAB_NO_NATIVE", "1")
    native._load_library.cache_clear()
    try:
        assert main(["train", "--data-dir", str(fashion_dir), "--epochs", "1", "--train-limit", "512",
                     "--test-limit", "256", "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "r2")]) == 0
    finally:
        native._load_library.cache_clear()
    speed = json.loads((tmp_path / "r2" / "config.json").read_text())["speed"]
    assert "kernel=lenet (the kernel's C passes are unavailable: CNNLAB_NO_NATIVE is set)" in speed


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_trainer_takes_a_fused_step_for_the_batches_it_accepts():
    """A fused step (e.g. a CUDA graph replay) replaces zero_grad/forward/backward/step for the batches it
    takes; for the others (it returns None) the trainer runs its ordinary step.  Both paths together
    must train exactly as the ordinary path alone."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (100,))

    def run(with_fused):
        torch.manual_seed(1)
        model = create("lenet")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        calls = []

        def fused(X, y):
            if X.shape[0] != 32:
                calls.append("declined")
                return None
            calls.append("fused")
            optimizer.zero_grad(set_to_none=True)
            logits = model(X)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            return loss.detach(), (logits.argmax(1) == y).sum()

        batches = BatchIterator(images, labels, 32, shuffle=True, seed=0)
        trainer = Trainer(model, optimizer, batches, BatchIterator(images, labels, 50), epochs=2,
                          device=torch.device("cpu"), fused_step=fused if with_fused else None)
        result = trainer.fit()
        return model, result, calls

    plain_model, plain, _ = run(False)
    fused_model, fused, calls = run(True)
    assert calls == ["fused", "fused", "fused", "declined"] * 2
    timing = {"wall_seconds", "examples_per_sec", "train_seconds", "timings"}
    assert {k: v for k, v in fused.items() if k not in timing} == {k: v for k, v in plain.items() if k not in timing}
    for a, b in zip(plain_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@cuda
def test_gpu_plans():
    """auto: eager bf16 (a cold compile costs the recipe more than it saves), and a whole-step CUDA
    graph where the step allows it; on: compiled CUDA graphs."""
    auto = plan_speed(torch.device("cuda"))
    assert not auto.compile and not auto.cuda_graphs
    assert auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    graphed = plan_speed(torch.device("cuda"), graphable=True)
    assert graphed.cuda_graphs and not graphed.compile
    assert not plan_speed(torch.device("cuda"), graphable=True, distributed=True).cuda_graphs
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


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gpu_graph_step_trains_exactly_as_the_eager_step(momentum):
    """Warm-up and capture leave no trace: graph replays (and an eager last partial batch) give the
    parameters of the eager path."""
    from cnnlab.train.fast import GraphStep

    device = torch.device("cuda")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (200,))

    def run(graphed):
        torch.manual_seed(1)
        model = create("lenet").to(device)
        init_weights(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=momentum)
        loss_fn = nn.CrossEntropyLoss()
        fast = FastStep(model, loss_fn, plan_speed(device, precision="fp32", graphable=True), 64)
        assert fast.plan.cuda_graphs
        step = GraphStep(model, fast.forward_loss, optimizer, 64) if graphed else None
        trainer = Trainer(model, optimizer, BatchIterator(images, labels, 64, shuffle=True, device=device),
                          BatchIterator(images, labels, 100, device=device), epochs=2, device=device,
                          loss_fn=loss_fn, fused_step=step)
        return model, trainer.fit(), step

    eager_model, eager, _ = run(False)
    graph_model, graphed, step = run(True)
    assert step.graph is not None, step.failed_reason
    for a, b in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert abs(graphed["train_loss"] - eager["train_loss"]) < 1e-4


@pytest.mark.gpu
@cuda
def test_gpu_cli_recipe_uses_the_graph_step(fashion_dir, tmp_path):
    from cnnlab.cli.main import main

    run_dir = tmp_path / "run"
    # fit()'s ReLU LeNet, SGD lr 0.1, momentum 0.9: the sigmoid recipe stays on its plateau (loss ~2.31)
    # for longer than a test runs.
    status = main(["train", "--data-dir", str(fashion_dir), "--epochs", "3", "--train-limit", "6000",
                   "--test-limit", "2000", "--device", "cuda", "--option", "activation=relu", "--lr", "0.1",
                   "--momentum", "0.9", "--batch-size", str(BATCH), "--no-progress", "--run-dir", str(run_dir)])
    assert status == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert "cuda_graphs=on" in config["speed"] and "compile=off" in config["speed"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_acc"] > 0.6


def test_tta_flip_scores_each_image_with_its_mirror(fashion_dir, tmp_path):
    """--tta flip: the run's test accuracy and `cnnlab evaluate` both use logits(x) + logits(flip(x))."""
    from cnnlab.cli.main import main
    from cnnlab.inference import predict_logits
    from cnnlab.train.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    assert main(["train", "--data-dir", str(fashion_dir), "--epochs", "1", "--train-limit", "512",
                 "--test-limit", "300", "--device", "cpu", "--kernel", "off", "--channels-last", "off",
                 "--optimizer", "adamw", "--lr", "0.003", "--option", "activation=relu", "--tta", "flip", "--no-progress",
                 "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = load_checkpoint(run_dir)
    model = create("lenet", activation="relu")
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    images, labels = load_split("fashion-mnist", "test", fashion_dir, download=False)
    images, labels = images[:300], labels[:300]
    with torch.no_grad():
        x = images.float() / 255
        by_hand = (model(x) + model(x.flip(-1))).argmax(1)
        plain = model(x).argmax(1)
    assert summary["test_acc"] == pytest.approx(float((by_hand == labels).double().mean()), abs=1e-9)
    assert not torch.equal(by_hand, plain)      # the mirror images change some answers
    torch.testing.assert_close(predict_logits(model, images, tta="flip").argmax(1), by_hand)
    assert load_checkpoint(run_dir)["config"]["tta"] == "flip"


def test_flip_shift_tta_is_six_weighted_views():
    """flip-shift: logits(x) + logits(mirror) + half of the four one-pixel shifts of both, zeros coming in;
    checked against shifts written out by index on a network that sees every pixel."""
    from cnnlab.inference import shifted, tta_forward

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 5 * 6, 3))
    x = torch.randn(4, 2, 5, 6)
    down_right = torch.zeros_like(x)
    down_right[..., 1:, 1:] = x[..., :-1, :-1]
    up_left = torch.zeros_like(x)
    up_left[..., :-1, :-1] = x[..., 1:, 1:]
    assert torch.equal(shifted(x, 1), down_right) and torch.equal(shifted(x, -1), up_left)
    m = x.flip(-1)
    m_down_right, m_up_left = torch.zeros_like(m), torch.zeros_like(m)
    m_down_right[..., 1:, 1:] = m[..., :-1, :-1]
    m_up_left[..., :-1, :-1] = m[..., 1:, 1:]
    with torch.no_grad():
        expected = net(x) + net(m) + 0.5 * (net(up_left) + net(down_right) + net(m_up_left) + net(m_down_right))
        torch.testing.assert_close(tta_forward(net, "flip-shift")(x), expected)
        torch.testing.assert_close(tta_forward(net, "flip")(x), net(x) + net(m))
        assert tta_forward(net, "none") is net
    with pytest.raises(ConfigError, match="test-time augmentation 'shift'"):
        tta_forward(net, "shift")


def test_runs_saved_with_tta_flip_still_load():
    """config.json of runs from before --tta (tta_flip: true/false) resumes with the same setting."""
    from cnnlab.inference import run_tta
    from cnnlab.train.config import TrainConfig

    assert TrainConfig.from_dict({"tta_flip": True}).tta == "flip"
    assert TrainConfig.from_dict({"tta_flip": False}).tta == "none"
    assert run_tta({"tta_flip": True}) == "flip" and run_tta({}) == "none" and run_tta({"tta": "flip-shift"}) == "flip-shift"
    with pytest.raises(ConfigError, match="test-time augmentation"):
        TrainConfig(tta="mirror").validate()


def test_graph_step_undoes_its_warm_up_when_capture_fails(monkeypatch):
    """GraphStep's warm-up runs real optimizer steps; if capture then fails, the parameters and the
    momentum buffers must be exactly as before, training continues eagerly, and it says so once.
    The CUDA calls are stood in for, so the bookkeeping is checked on any machine."""
    import contextlib as _contextlib

    from cnnlab.train.fast import GraphStep

    class FakeStream:
        def wait_stream(self, other):
            pass

    def failing_graph(graph):
        raise RuntimeError("operation not permitted when stream is capturing\nlong trace")

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: _contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: FakeStream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", failing_graph)

    torch.manual_seed(0)
    model = create("lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    X, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    # One ordinary step first, so that momentum buffers exist and must be restored, not just zeroed.
    nn.CrossEntropyLoss()(model(X), y).backward()
    optimizer.step()
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]

    fast = FastStep(model, nn.CrossEntropyLoss(), plan_speed(torch.device("cpu"), precision="fp32"), 16)
    step = GraphStep(model, fast.forward_loss, optimizer, batch_size=16)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .*not permitted"):
        assert step(X, y) is None
    assert step.graph is None and "RuntimeError" in step.failed_reason
    for p, want, buf in zip(model.parameters(), before, buffers):
        torch.testing.assert_close(p, want, rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], buf, rtol=0, atol=0)
        assert p.grad is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # declines from then on, without warning again
        assert step(X, y) is None
        assert step(X[:8], y[:8]) is None          # and a partial batch is never graphed
