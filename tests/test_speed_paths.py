"""The training steps (eager, compiled, bf16, channels-last, the LeNet kernel, CUDA graphs) learn what
the plain step learns, and ``choose_step`` picks the one that pays.

Accuracy is checked on real Fashion-MNIST: on the CPU the committed subset (2,000 training / 1,000
test images, SUBSET_EPOCHS epochs), on a GPU 6,000 / 2,000 images of the full data for three epochs.
LeNet's sigmoid recipe needs ~500 full-size steps to leave chance level, too long for a test, so these
runs use the same LeNet with ReLU activations and SGD lr 0.1 with momentum, which learns in a few
hundred small steps; the steps under test do not depend on the activation.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from cnnlab.data import load_split
from cnnlab.data.loader import BatchIterator
from cnnlab.device import cpu_has_native_bf16
from cnnlab.errors import ConfigError
from cnnlab.kernels.lenet import native
from cnnlab.models import create
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import Trainer, init_weights
from cnnlab.train.steps import (EagerStep, GraphStep, KernelStep, StepSettings, TrainStep, choose_step,
                                compiler_unavailable_reason)
from conftest import OneProcess

BATCH = 64
BAND = 0.04  # two short runs with different rounding differ by about this much at most on 2,000 images
SUBSET_EPOCHS = 9  # 2,000 images 9 times: the 18,000 examples (282 steps) of 6,000 images 3 times
SUBSET_BAND = 0.08
"""On the subset's 1,000 test images two such runs differ more: measured on the project's 2-core CPU
for seeds 0-3 (plain test acc 0.776-0.806), the CPU steps below differed from the plain step by
0.028 rms and 0.060 at most (0.045 at most with seed 0, the tests' seed).  A broken step stays
near chance (0.1), far outside the band."""
CPU = torch.device("cpu")


def relu_lenet() -> nn.Module:
    model = create("lenet")
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Sigmoid):
            model[i] = nn.ReLU()
    return model


def choose(model=None, device=CPU, loss_fn=None, dist=None, **settings) -> TrainStep:
    """The step choose_step picks for ``model`` (default: the book's LeNet) and ``settings``."""
    model = create("lenet") if model is None else model
    config = TrainConfig(**{"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, **settings})
    return choose_step(config, model.to(device), device, loss_fn=loss_fn or nn.CrossEntropyLoss(),
                       batch_size=BATCH, dist=dist)


def fit(fashion_dir, device, epochs=3, n_train=6000, n_test=2000, **settings):
    """The ReLU LeNet trained on the first ``n_train`` images and scored on the first ``n_test``."""
    x, y = load_split("fashion-mnist", "train", fashion_dir, download=False)
    tx, ty = load_split("fashion-mnist", "test", fashion_dir, download=False)
    train = BatchIterator(x[:n_train], y[:n_train], BATCH, shuffle=True, seed=0, device=device)
    test = BatchIterator(tx[:n_test], ty[:n_test], 1000, device=device)
    torch.manual_seed(0)
    model = relu_lenet()
    init_weights(model)
    step = choose(model, device, **{"compile": "off", "precision": "fp32", "kernel": "off",
                                    "channels_last": "off", **settings})
    trainer = Trainer(step, train, test, epochs=epochs, device=device)
    return trainer.fit(), step


def fit_subset(fashion_dir, device, **settings):
    """fit() on the whole committed subset."""
    return fit(fashion_dir, device, epochs=SUBSET_EPOCHS, n_train=None, n_test=None, **settings)


@pytest.fixture(scope="module")
def plain_cpu_acc(tmp_path_factory):
    from tests.conftest import SUBSET_DATA, use_subset_registry

    with pytest.MonkeyPatch.context() as patch:
        use_subset_registry(patch)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))   # as isolated_cache does
        result, step = fit_subset(SUBSET_DATA / "fashion-mnist", CPU)
    assert type(step) is EagerStep and step.settings == StepSettings()
    return result["test_acc"]


def test_plain_step_learns(plain_cpu_acc):
    # The band below means something only if the plain step is far above chance (0.1).
    assert plain_cpu_acc > 0.6


def test_bf16_autocast_on_cpu_matches_plain_accuracy(fashion_dir, plain_cpu_acc):
    result, step = fit_subset(fashion_dir, CPU, precision="bf16")
    assert step.settings.precision == "bf16"
    assert step.logits(torch.rand(2, 1, 28, 28)).dtype == torch.bfloat16    # evaluated as it trains
    assert abs(result["test_acc"] - plain_cpu_acc) <= SUBSET_BAND


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_matches_plain_accuracy(fashion_dir, plain_cpu_acc, precision):
    result, step = fit_subset(fashion_dir, CPU, precision=precision, channels_last="on")
    assert type(step) is EagerStep and step.settings.channels_last and step.settings.precision == precision
    assert step.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert abs(result["test_acc"] - plain_cpu_acc) <= SUBSET_BAND


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lenet_kernel_matches_plain_accuracy(fashion_dir, plain_cpu_acc, precision):
    # Training and evaluation both run through the kernel (step.logits).
    result, step = fit_subset(fashion_dir, CPU, precision=precision, kernel="on")
    assert isinstance(step, KernelStep)
    assert step.kernel.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    X = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(step.logits(X), step.kernel.logits(X), rtol=0, atol=0)
    assert abs(result["test_acc"] - plain_cpu_acc) <= SUBSET_BAND


@pytest.mark.skipif(compiler_unavailable_reason(CPU) is not None, reason="torch.compile cannot build CPU code here")
def test_compiled_step_on_cpu_matches_plain_accuracy(fashion_dir, plain_cpu_acc):
    # The one test that really compiles (inductor, C++): it costs 10-40 s cold, little once cached.
    result, step = fit_subset(fashion_dir, CPU, compile="on")
    assert step.compiled, step.fallback_reason
    assert abs(result["test_acc"] - plain_cpu_acc) <= SUBSET_BAND


def test_auto_for_a_network_without_convolutions_on_cpu_is_the_plain_step():
    step = choose(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    assert type(step) is EagerStep and step.settings == StepSettings()
    assert step.reason == "compile=off, precision=fp32, cuda_graphs=off, channels_last=off, kernel=off"


def test_auto_for_the_book_lenet_on_cpu_is_the_kernel():
    step = choose()
    assert isinstance(step, KernelStep) and not step.settings.compile
    assert step.settings.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert "kernel=lenet" in step.reason
    assert not step.settings.channels_last          # the kernel has its own layout


def test_auto_for_other_convnets_on_cpu_is_channels_last():
    step = choose(create("vgg_mini"))
    assert type(step) is EagerStep and step.settings.channels_last
    assert step.settings.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert not choose(create("vgg_mini"), channels_last="off").settings.channels_last


def test_auto_keeps_nchw_where_batch_norm_normalises_few_channels():
    """benchmarks/layouts.py: NHWC batch norm over 6 channels made the book's BN LeNet's step slower."""
    step = choose(create("lenet_bn"))
    assert type(step) is EagerStep and not step.settings.channels_last and step.settings.precision == "fp32"
    assert step.model[0].weight.is_contiguous()
    assert choose(create("lenet_bn", channels=[16, 32])).settings.channels_last
    assert choose(create("lenet_bn"), channels_last="on").settings.channels_last   # asked for, it runs


@pytest.mark.parametrize("why, kwargs", [
    ("off", dict(kernel="off")),
    ("DDP", dict(dist=OneProcess())),
    ("compile", dict(compile="on")),
    ("label smoothing", dict(loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))),
    ("max pooling", dict(model=create("lenet", pooling="max"))),
    ("batch norm", dict(model=create("lenet_bn"))),
    ("another network", dict(model=create("vgg_mini"))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_auto_skips_the_kernel_where_it_does_not_apply(why, kwargs, monkeypatch):
    monkeypatch.setenv("CNNLAB_NO_COMPILE", "1")      # choosing, not compiling
    step = choose(**{"channels_last": "off", **kwargs})
    assert not isinstance(step, KernelStep), why
    # auto on CPU without the kernel or channels-last keeps fp32: NCHW autocast bf16 is slower than fp32.
    assert step.settings.precision == "fp32"
    if "dist" in kwargs:
        assert kwargs["dist"].wrapped == [step.model]


def test_kernel_requested_where_it_cannot_run_falls_back_with_a_note():
    step = choose(create("lenet", pooling="max"), kernel="on")
    assert not isinstance(step, KernelStep)
    assert "kernel unavailable" in step.reason and "pooling" in step.reason


def test_compile_requested_without_a_compiler_falls_back_with_a_note(monkeypatch):
    monkeypatch.setenv("CNNLAB_NO_COMPILE", "1")
    step = choose(compile="on")
    assert not step.settings.compile and not step.compiled
    assert "CNNLAB_NO_COMPILE" in step.reason


def test_without_the_c_passes_the_kernel_says_why(monkeypatch):
    monkeypatch.setenv("CNNLAB_NO_NATIVE", "1")
    step = choose()
    assert isinstance(step, KernelStep) and step.kernel.passes.name == "torch"
    assert step.reason.endswith("kernel=lenet (the kernel's C passes are unavailable: CNNLAB_NO_NATIVE is set)")


def test_unknown_settings_are_config_errors():
    for setting, value, label in [("compile", "fast", "compile setting"), ("precision", "fp8", "precision"),
                                  ("kernel", "fused", "kernel setting"),
                                  ("channels_last", "nhwc", "channels-last setting")]:
        with pytest.raises(ConfigError, match=label):
            choose(**{setting: value})


def _sgd_by_hand(model, X, y, lr):
    """One SGD step (no momentum) of ``model`` on (X, y) with autograd: the reference."""
    loss = nn.CrossEntropyLoss()(model(X), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)       # p - lr * grad, rounded once (torch.optim.SGD's own update)
    return loss.detach()


def test_a_step_updates_the_parameters_and_returns_the_loss_sum():
    """One call: forward, loss, backward and the update; the loss comes back summed over the batch."""
    torch.manual_seed(0)
    model = create("lenet")
    reference = copy.deepcopy(model)
    X, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    step = EagerStep(model, nn.CrossEntropyLoss(), optimizer)
    with torch.no_grad():
        correct = int((reference(X).argmax(1) == y).sum())
    loss = _sgd_by_hand(reference, X, y, 0.5)
    loss_sum, got_correct = step(X, y)
    assert loss_sum.dtype == torch.float64 and float(loss_sum) == float(loss.double() * 8)
    assert int(got_correct) == correct
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_failed_compilation_falls_back_to_the_plain_step(monkeypatch):
    """A compiler that fails at the first call: one warning, then exactly the eager step."""
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("inductor: no working C++ compiler\nlong trace")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = create("lenet")
    reference = copy.deepcopy(model)
    X, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = _sgd_by_hand(reference, X, y, 0.9)

    step = EagerStep(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.9),
                     StepSettings(compile=True), batch_size=8)
    assert step.compiled
    with pytest.warns(RuntimeWarning, match="no working C\\+\\+ compiler"):
        loss_sum, _ = step(X, y)
    assert not step.compiled and "RuntimeError" in step.fallback_reason
    assert float(loss_sum) == float(loss.double() * 8)
    for got, want in zip(model.parameters(), reference.parameters()):
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
    step = EagerStep(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                     StepSettings(compile=True), batch_size=32)
    sizes = []
    for X, yb in BatchIterator(images, labels, 32, shuffle=True).batches(0):
        step(X, yb)
        sizes.append(X.shape[0])
    assert sizes == [32, 32, 32, 4]
    assert shapes == [(32, 1, 28, 28)] * 3


def test_the_trainer_runs_its_step_once_per_batch_and_sums_what_it_returns():
    """The Trainer knows nothing of how a step computes: it calls it once per batch, in order, then the
    schedule, and its epoch's numbers are the sums of what the step returned."""
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (100,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    events = []

    class Recording(TrainStep):
        def __call__(self, X, y):
            events.append(("step", X.shape[0]))
            return torch.tensor(0.5 * X.shape[0], dtype=torch.float64), (y < 5).sum()

        def logits(self, X):
            return torch.nn.functional.one_hot(torch.zeros(X.shape[0], dtype=torch.int64), 10).float()

    class Schedule:
        def step(self):
            events.append(("schedule",))

    trainer = Trainer(Recording(model, torch.optim.SGD(model.parameters(), lr=0.1)),
                      BatchIterator(images, labels, 32, shuffle=True, seed=0), BatchIterator(images, labels, 50),
                      epochs=2, device=CPU, scheduler=Schedule())
    result = trainer.fit()
    assert events == [e for size in (32, 32, 32, 4) for e in (("step", size), ("schedule",))] * 2
    assert result["train_loss"] == 0.5
    assert result["train_acc"] == float((labels < 5).sum()) / 100
    assert result["test_acc"] == float((labels == 0).sum()) / 100


def test_cli_prints_and_records_the_step(fashion_subset, tmp_path, monkeypatch, capsys):
    from cnnlab.cli.main import main

    args = ["train", "--data-dir", str(fashion_subset), "--no-verify", "--epochs", "1", "--train-limit", "512",
            "--test-limit", "256", "--device", "cpu", "--no-progress"]
    assert main(args + ["--precision", "bf16", "--compile", "off", "--run-dir", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["precision"] == "bf16"
    # The book's LeNet on CPU: the fused step, with its C passes where a C compiler exists.
    has_c = native.load("bf16")[0] is not None
    expected = "compile=off, precision=bf16, cuda_graphs=off, channels_last=off, kernel=" + \
        ("lenet+c" if has_c else "lenet (the kernel's C passes are unavailable")
    assert config["speed"].startswith(expected)
    assert capsys.readouterr().err.splitlines()[0] == \
        f"speed: {config['speed']}; threads={config['threads']}, omp_wait={config['omp_wait']}"
    # Without them (here: turned off) the run says so and trains with the kernel's PyTorch passes.
    monkeypatch.setenv("CNNLAB_NO_NATIVE", "1")
    assert main(args + ["--run-dir", str(tmp_path / "r2")]) == 0
    speed = json.loads((tmp_path / "r2" / "config.json").read_text())["speed"]
    assert speed.endswith("kernel=lenet (the kernel's C passes are unavailable: CNNLAB_NO_NATIVE is set)")


def test_lr_find_measures_the_step_that_trains(fashion_subset, monkeypatch):
    """lr-find runs the run's own step (here the LeNet kernel), at the rates it sets."""
    from cnnlab.lrfind import lr_range_test

    calls = []
    original = KernelStep.__call__

    def recording(self, X, y):
        calls.append(self.optimizer.param_groups[0]["lr"])
        return original(self, X, y)

    monkeypatch.setattr(KernelStep, "__call__", recording)
    result = lr_range_test(TrainConfig(data_dir=str(fashion_subset), verify=False), start_lr=0.01, end_lr=1.0,
                           num_steps=10, device=CPU)
    assert calls == result.lrs and len(calls) == 10
    assert calls[0] == pytest.approx(0.01) and calls[-1] == pytest.approx(1.0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_gpu_choices():
    """auto: eager bf16 (a cold compile costs the recipe more than it saves), and a whole-step CUDA
    graph where the step allows it; on: compiled CUDA graphs."""
    device = torch.device("cuda")
    scheduled = choose(device=device, schedule="cosine")
    assert type(scheduled) is EagerStep and not scheduled.settings.compile and not scheduled.settings.cuda_graphs
    assert scheduled.settings.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    graphed = choose(device=device)
    assert isinstance(graphed, GraphStep) and not graphed.settings.compile
    assert type(choose(device=device, dist=OneProcess())) is EagerStep
    assert type(choose(device=device, augment=["flip"])) is EagerStep
    if compiler_unavailable_reason(device) is None:
        on = choose(device=device, compile="on")
        assert type(on) is EagerStep and on.settings.compile and on.settings.cuda_graphs


@pytest.mark.gpu
@cuda
def test_gpu_compiled_step_matches_plain_accuracy(full_fashion_dir):
    device = torch.device("cuda")
    plain, _ = fit(full_fashion_dir, device, schedule="cosine")
    fast_result, fast = fit(full_fashion_dir, device, compile="on", precision="auto")
    assert plain["test_acc"] > 0.6
    if compiler_unavailable_reason(device) is None:
        assert fast.compiled, fast.fallback_reason
    assert abs(fast_result["test_acc"] - plain["test_acc"]) <= BAND


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gpu_graph_step_trains_exactly_as_the_eager_step(momentum):
    """Warm-up and capture leave no trace: graph replays (and an eager last partial batch) give the
    parameters of the eager step."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (200,))

    def run(graphed):
        torch.manual_seed(1)
        model = create("lenet").to(device)
        init_weights(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=momentum)
        step = EagerStep(model, nn.CrossEntropyLoss(), optimizer, StepSettings(cuda_graphs=graphed), 64)
        if graphed:
            step = GraphStep(step, 64)
        trainer = Trainer(step, BatchIterator(images, labels, 64, shuffle=True, device=device),
                          BatchIterator(images, labels, 100, device=device), epochs=2, device=device)
        return model, trainer.fit(), step

    eager_model, eager, _ = run(False)
    graph_model, graphed, step = run(True)
    assert step.graph is not None, step.failed_reason
    for a, b in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert abs(graphed["train_loss"] - eager["train_loss"]) < 1e-4


@pytest.mark.gpu
@cuda
def test_gpu_cli_recipe_uses_the_graph_step(full_fashion_dir, tmp_path):
    from cnnlab.cli.main import main

    run_dir = tmp_path / "run"
    # fit()'s ReLU LeNet, SGD lr 0.1, momentum 0.9: the sigmoid recipe stays on its plateau (loss ~2.31)
    # for longer than a test runs.
    status = main(["train", "--data-dir", str(full_fashion_dir), "--epochs", "3", "--train-limit", "6000",
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


def test_a_validation_split_is_scored_by_the_plain_network_and_the_test_split_with_tta(fashion_dir, tmp_path):
    """With --val-fraction, every epoch's validation accuracy is the plain network's (flip-shift would cost
    six forward passes), and the test split, scored once at the end, is scored with the run's --tta."""
    from cnnlab.train.callbacks import Callback
    from cnnlab.train.run import train

    class Seen(Callback):
        def __init__(self):
            self.val = []

        def on_held_out_batch(self, trainer, X, y, logits):
            self.val.append((X.clone(), y.clone(), logits.float().clone()))

        def on_fit_end(self, trainer, result):
            self.model = trainer.step.module

    seen = Seen()
    config = TrainConfig(data_dir=str(fashion_dir), epochs=1, train_limit=600, test_limit=300, val_fraction=0.2,
                         device="cpu", kernel="off", channels_last="off", precision="fp32", optimizer="adamw",
                         lr=0.003, model_options={"activation": "relu"}, tta="flip")
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as out:
        result = train(config, run_dir=tmp_path / "run", progress=False, out=out, callbacks=[seen])
    model = seen.model.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y, logits in seen.val:
            torch.testing.assert_close(logits, model(X))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        assert total > 100 and result["val_acc"] == pytest.approx(correct / total, abs=1e-12)
        images, labels = load_split("fashion-mnist", "test", fashion_dir, download=False)
        x = images[:300].float() / 255
        by_hand = ((model(x) + model(x.flip(-1))).argmax(1) == labels[:300]).double().mean()
        plain = (model(x).argmax(1) == labels[:300]).double().mean()
    assert result["test_acc"] == pytest.approx(float(by_hand), abs=1e-9) and float(by_hand) != float(plain)


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
    """GraphStep's warm-up runs real optimizer steps; if capture then fails, it says so once and every
    batch, this one included, runs the eager step from exactly the parameters and momentum buffers
    before the warm-up.  The CUDA calls are stood in for, so the bookkeeping is checked on any machine."""
    import contextlib as _contextlib

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
    ref_model, ref_optimizer = copy.deepcopy((model, optimizer))
    reference = EagerStep(ref_model, nn.CrossEntropyLoss(), ref_optimizer)

    step = GraphStep(EagerStep(model, nn.CrossEntropyLoss(), optimizer), batch_size=16)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .*not permitted"):
        got = step(X, y)
    assert step.graph is None and "RuntimeError" in step.failed_reason
    want = reference(X, y)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # eager from then on, without warning again
        for batch in (slice(None), slice(0, 8)):   # a partial batch is never graphed
            got, want = step(X[batch], y[batch]), reference(X[batch], y[batch])
            assert torch.equal(got[0], want[0])
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], ref_optimizer.state[q]["momentum_buffer"],
                                   rtol=0, atol=0)
