"""What each small fast path gains on the recipe it exists for, A/B in turns, medians.

    python benchmarks/fast_paths.py [--only NAME,...] [--rounds 7] [--steps 40] [--recipe-seconds S]

A fast path stays in cnnlab only if it gains at least 5 % (``benchmarks/RESULTS.md``, "Fast paths kept").

* ``host-sums``: the epoch's metric sums as Python floats on the CPU, against the tensors every device
  uses; per step of the book's recipe (the LeNet kernel, batch 256).
* ``plain-sgd``: ``cnnlab.optim.PlainSGD`` against ``torch.optim.SGD`` for the book's recipe: per step,
  and the start-up its construction costs (a fresh interpreter each, in turns), as a share of the
  whole 10-epoch recipe (``cnnlab train`` on the full data: measured once here, or ``--recipe-seconds``).
* ``profiler-gate``: the C passes called directly unless a profiler records, against always labelling
  them (``torch.profiler.record_function``); per step of the book's recipe.
* ``imports``: the start-up of ``cnnlab train`` (a fresh ``import cnnlab.train.run``, in turns) as it
  is, against also importing at once everything the library imports inside functions for a run.
* ``compile``: ``--compile on`` on the CPU, per step of the best-5min preset's network (channels-last,
  AdamW), with the cold compile's cost.

Each in-process comparison builds both variants from the same weights and runs them in turns for
``--rounds`` rounds of ``--steps`` steps on real batches, the order alternating, and reports each
one's median ms per step; subprocess comparisons alternate the two interpreters ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from cnnlab.data import load_split  # noqa: E402
from cnnlab.data.loader import BatchIterator  # noqa: E402
from cnnlab.models import create  # noqa: E402
from cnnlab.train.config import TrainConfig  # noqa: E402
from cnnlab.train.engine import MetricSums, init_weights  # noqa: E402
from cnnlab.train.steps import EagerStep, StepSettings, choose_step  # noqa: E402

SUBSET = Path(__file__).resolve().parents[1] / "tests" / "data" / "fashion-mnist"


def real_batches(data_dir: Path, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    verify = data_dir != SUBSET
    images, labels = load_split("fashion-mnist", "train", data_dir, download=False, verify=verify)
    it = BatchIterator(images, labels, batch, shuffle=True, seed=0)
    full = [(X, y) for X, y in it.batches(0) if X.shape[0] == batch]
    return [full[i % len(full)] for i in range(count)]


def interleaved(variants: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per step of each ``variants[name](step_index)``, run in turns."""
    names = list(variants)
    for fn in variants.values():            # warm-up: buffers, first-call costs
        for i in range(3):
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = variants[name]
            start = time.perf_counter()
            for i in range(steps):
                fn(i)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], reference: str, candidate: str) -> float:
    gain = medians[reference] / medians[candidate] - 1
    print(f"\n{title}")
    for name, ms in medians.items():
        print(f"  {name:<28} {ms:9.3f} ms/step")
    print(f"  gain of {candidate!r} over {reference!r}: {100 * gain:+.1f} %")
    return gain


def book_step(optimizer: str = "plain"):
    """The book's recipe's step (choose_step's choice on this machine), from fixed weights."""
    torch.manual_seed(0)
    model = create("lenet")
    init_weights(model)
    step = choose_step(TrainConfig(), model, torch.device("cpu"), loss_fn=torch.nn.CrossEntropyLoss(), batch_size=256)
    if optimizer == "torch":
        step.optimizer = torch.optim.SGD(model.parameters(), lr=0.9)
    return step


class HostSums:
    """The sums as Python floats: the alternative to MetricSums measured here."""

    def __init__(self, limit: float):
        self.limit, self.sums, self.first_bad = limit, [0.0, 0.0, 0.0], -1

    def add(self, loss_sum, correct, n, step):
        value = float(loss_sum)
        self.sums[0] += value
        self.sums[1] += float(correct)
        self.sums[2] += n
        if self.first_bad < 0 and not (math.isfinite(value) and value <= self.limit * n):
            self.first_bad = step


def bench_host_sums(batches, args) -> float:
    variants = {}
    for name, make in (("tensor sums (MetricSums)", lambda: MetricSums(torch.device("cpu"), 230.0)),
                       ("host sums (HostSums)", lambda: HostSums(230.0))):
        step, sums = book_step(), make()

        def run(i, step=step, sums=sums):
            X, y = batches[i % len(batches)]
            loss_sum, correct = step(X, y)
            sums.add(loss_sum, correct, y.shape[0], i)
        variants[name] = run
    print(f"(the step: {book_step().reason})")
    return report("host-sums: the book's recipe, per step", interleaved(variants, args.rounds, args.steps),
                  "tensor sums (MetricSums)", "host sums (HostSums)")


def bench_profiler_gate(batches, args) -> float:
    from cnnlab.kernels.lenet import native

    class AlwaysLabelled(native.CPasses):
        def fn(self, name):
            return native._labelled(f"cnnlab::{name}", getattr(self, "_" + name))

    gated = book_step()
    if gated.kernel.passes.name != "c":
        print(f"\nprofiler-gate: skipped, the C passes are unavailable ({gated.reason})")
        return float("nan")
    labelled = book_step()
    passes = labelled.kernel.passes
    labelled.kernel.passes = AlwaysLabelled(passes.library, passes.suffix)
    variants = {"always labelled": lambda i: labelled(*batches[i % len(batches)]),
                "gated (labels under a profiler)": lambda i: gated(*batches[i % len(batches)])}
    return report("profiler-gate: the book's recipe, per step", interleaved(variants, args.rounds, args.steps),
                  "always labelled", "gated (labels under a profiler)")


def fresh_seconds(code: str) -> float:
    """What ``code`` prints (seconds), run in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return float(out.split()[-1])


def alternate(codes: dict[str, str], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in codes}
    names = list(codes)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(fresh_seconds(codes[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def recipe_seconds(args) -> float:
    if args.recipe_seconds:
        return args.recipe_seconds
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab", "train", "--data-dir", str(Path(args.data_dir).parent),
                    "--no-progress", "--run-dir", str(Path(args.tmp) / f"recipe-{os.getpid()}")],
                   env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    print(f"\nthe book's recipe, cnnlab train on the full data, end to end: {seconds:.1f} s")
    args.recipe_seconds = seconds
    return seconds


def bench_plain_sgd(batches, args) -> float:
    variants = {"torch.optim.SGD": book_step("torch"), "PlainSGD": book_step("plain")}
    per_step = report("plain-sgd: the book's recipe, per step",
                      interleaved({k: (lambda i, s=s: s(*batches[i % len(batches)])) for k, s in variants.items()},
                                  args.rounds, args.steps), "torch.optim.SGD", "PlainSGD")
    setup = ("import time, torch\nfrom torch import nn\nimport cnnlab.optim\nm = nn.Linear(2, 2)\n"
             "t = time.perf_counter()\n{}\nprint(time.perf_counter() - t)")
    construct = alternate({"torch.optim.SGD": setup.format("torch.optim.SGD(m.parameters(), lr=0.9)"),
                           "PlainSGD": setup.format("cnnlab.optim.PlainSGD(m.parameters(), lr=0.9)")}, args.rounds)
    saved = construct["torch.optim.SGD"] - construct["PlainSGD"]
    total = recipe_seconds(args)
    print(f"  constructing it in a fresh interpreter: torch.optim.SGD {construct['torch.optim.SGD']:.3f} s, "
          f"PlainSGD {construct['PlainSGD']:.3f} s: {saved:.3f} s saved, {100 * saved / total:.1f} % of the recipe")
    return per_step + saved / total


def bench_imports(batches, args) -> float:
    lazy = ("import time\nt = time.perf_counter()\nimport cnnlab.train.run\nprint(time.perf_counter() - t)")
    eager = ("import time\nt = time.perf_counter()\nimport cnnlab.train.run\nimport cnnlab.augment, cnnlab.data, "
             "cnnlab.data.loader, cnnlab.inference, cnnlab.models, cnnlab.optim, cnnlab.kernels.lenet.native, "
             "cnnlab.device, cnnlab.fileio\nprint(time.perf_counter() - t)")
    medians = alternate({"function-level (as is)": lazy, "all at module level": eager}, args.rounds)
    extra = medians["all at module level"] - medians["function-level (as is)"]
    total = recipe_seconds(args)
    print("\nimports: a fresh `import cnnlab.train.run`")
    for name, seconds in medians.items():
        print(f"  {name:<28} {seconds:9.3f} s")
    print(f"  deferred: {extra:.3f} s, {100 * extra / total:.1f} % of the recipe, which imports all of it anyway "
          f"(gain for cnnlab train: 0 %)")
    return 0.0


def bench_compile(batches, args) -> float:
    from cnnlab.optim import build_optimizer
    from cnnlab.presets import preset_config
    from cnnlab.train.steps import compiler_unavailable_reason

    why = compiler_unavailable_reason(torch.device("cpu"))
    if why is not None:
        print(f"\ncompile: skipped ({why})")
        return float("nan")
    config = preset_config("best-5min")
    batches = [(X[:128], y[:128]) for X, y in batches]
    steps = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        model = create("vgg_mini", **config.model_options).to(memory_format=torch.channels_last)
        steps[name] = EagerStep(model, torch.nn.CrossEntropyLoss(label_smoothing=0.1), build_optimizer(config, model),
                                StepSettings(channels_last=True, compile=compiled), batch_size=128)
    start = time.perf_counter()
    steps["compiled"](*batches[0])
    cold = time.perf_counter() - start
    gain = report("compile: the best-5min network (batch 128, channels-last, AdamW), per step",
                  interleaved({k: (lambda i, s=s: s(*batches[i % len(batches)])) for k, s in steps.items()},
                              args.rounds, max(5, args.steps // 4)), "eager", "compiled")
    print(f"  the first compiled step (the cold compile): {cold:.1f} s")
    return gain


BENCHES = {"host-sums": bench_host_sums, "plain-sgd": bench_plain_sgd, "profiler-gate": bench_profiler_gate,
           "imports": bench_imports, "compile": bench_compile}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated, from {', '.join(BENCHES)}")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--data-dir", default=str(DEFAULT_FASHION_MNIST if DEFAULT_FASHION_MNIST.exists() else SUBSET),
                   help="folder with Fashion-MNIST's IDX files (default: ../shared/data, else the committed subset)")
    p.add_argument("--recipe-seconds", type=float, default=None,
                   help="the book's 10-epoch recipe's end-to-end seconds, instead of measuring it once")
    p.add_argument("--tmp", default="/tmp", help="where the measured recipe writes its run directory")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python {platform.python_version()}, "
          f"torch {torch.__version__}, CPU {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    batches = real_batches(Path(args.data_dir), 256, 16)
    gains = {name: BENCHES[name](batches, args) for name in names}
    print("\nsummary (kept at >= 5 %):")
    for name, gain in gains.items():
        print(f"  {name:<14} {100 * gain:+6.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
