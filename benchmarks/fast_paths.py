"""What each small fast path gains on the recipe it exists for, A/B in turns, medians.

    python benchmarks/fast_paths.py [--only NAME,...] [--rounds 7] [--steps 40] [--recipe-seconds S]

A fast path stays in cnnlab only if it gains at least 5 % (``benchmarks/RESULTS.md``, "Fast paths kept").

* ``host-sums``: the epoch's metric sums as Python floats on the CPU, against the tensors every device
  uses; per step of the book's recipe (the LeNet kernel, batch 256).
* ``plain-sgd``: ``cnnlab.optim.PlainSGD`` against ``torch.optim.SGD`` for the book's recipe: per step,
  and the start-up its construction costs (a fresh interpreter each, in turns), as a share of the
  whole 10-epoch recipe (``cnnlab train`` on the full data: measured once here, or ``--recipe-seconds``).
* ``profiler-gate``: the C passes called directly unless a profiler records, against always labelling
  them (``torch.profiler.record_function``, what cnnlab does); per step of the book's recipe.
* ``imports``: what importing the library's own modules costs a fresh interpreter beyond torch and
  numpy (in turns): the most that importing them inside functions, for start-up time, could save.
* ``compile``: ``--compile on`` on the CPU, per step of the best-5min preset's network (channels-last,
  AdamW), with the cold compile's cost.
* ``folder-listing``: the image-folder scan's stats through the open folder (``dir_fd``: Linux, macOS)
  against ``os.scandir``'s entries (what Windows uses), on a 70,000-file tree: a share of the scan itself,
  most of a cached folder load.

What a path saves is measured where it happens, A against B in turns (``--rounds`` rounds, the order
alternating, medians): the sums' update after a real step, the optimizer's update, a C pass called
directly or through its label, a fresh interpreter's imports.  The gain is that saving divided by the
recipe's own cost, the book's step (its fastest round of ``--steps`` steps on real batches: the least
loaded, so the largest share any saving can claim) or the whole 10-epoch run.  On a loaded machine
whole-step A/B timings drown a 1 % difference in noise; these do not.
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
from cnnlab.train.steps import StepPlan, build_step, choose_step  # noqa: E402

SUBSET = Path(__file__).resolve().parents[1] / "tests" / "data" / "fashion-mnist"


def real_batches(data_dir: Path, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    verify = data_dir != SUBSET
    images, labels = load_split("fashion-mnist", "train", data_dir, download=False, verify=verify)
    it = BatchIterator(images, labels, batch, shuffle=True, seed=0)
    full = [(X, y) for X, y in it.batches(0) if X.shape[0] == batch]
    return [full[i % len(full)] for i in range(count)]


def interleaved(variants: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median microseconds per call of each ``variants[name](i)``, run in turns."""
    names = list(variants)
    for fn in variants.values():            # warm-up: buffers, first-call costs
        for i in range(3):
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = variants[name]
            start = time.perf_counter()
            for i in range(calls):
                fn(i)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


STEP_US: list[float] = []


def step_us(batches, args) -> float:
    """The book's step on this machine: the fastest of ``--rounds`` rounds of ``--steps`` steps, in us."""
    if not STEP_US:
        step = book_step()
        for X, y in batches[:3]:
            step(X, y)
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for i in range(args.steps):
                step(*batches[i % len(batches)])
            rounds.append((time.perf_counter() - start) / args.steps * 1e6)
        STEP_US.append(min(rounds))
        print(f"\nthe book's step ({step.reason}): fastest round {min(rounds) / 1e3:.2f} ms, "
              f"median {statistics.median(rounds) / 1e3:.2f} ms per step of 256")
    return STEP_US[0]


def report(title: str, medians: dict[str, float], reference: str, candidate: str, per_step: float,
           cost: float) -> float:
    """Print the medians; the gain is (reference - candidate) x per_step calls, as a share of ``cost`` us."""
    saved = (medians[reference] - medians[candidate]) * per_step
    print(f"\n{title}")
    for name, us in medians.items():
        print(f"  {name:<34} {us:10.2f} us/call")
    print(f"  saved: {saved:.1f} us a step of {cost / 1e3:.2f} ms: {100 * saved / cost:+.2f} %")
    return saved / cost


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
    step = book_step()
    outputs = [step(X, y) for X, y in batches[:4]]        # a real step's loss sum and correct count
    tensor_sums, host_sums = MetricSums(torch.device("cpu"), 230.0), HostSums(230.0)

    def add(sums):
        return lambda i: sums.add(*outputs[i % 4], 256, i)
    medians = interleaved({"tensor sums (MetricSums)": add(tensor_sums), "host sums (HostSums)": add(host_sums)},
                          args.rounds, 2000)
    return report("host-sums: adding a step's metrics", medians, "tensor sums (MetricSums)", "host sums (HostSums)",
                  1, step_us(batches, args))


def bench_profiler_gate(batches, args) -> float:
    from cnnlab.kernels.lenet import native

    step = book_step()
    if step.kernel.passes.name != "c":
        print(f"\nprofiler-gate: skipped, the C passes are unavailable ({step.reason})")
        return float("nan")
    passes = step.kernel.passes
    direct = getattr(passes.library, f"lenet_act_pool_{passes.suffix}")     # a real pass on a small slab
    enabled = torch._C._autograd._profiler_enabled

    def gated(*a):
        return native._labelled("cnnlab::act_pool", direct)(*a) if enabled() else direct(*a)
    Z, f = torch.rand(4 * 64), torch.empty(64)
    args_ = (Z.data_ptr(), 64, 0, 0.25, f.data_ptr())
    medians = interleaved({"always labelled (as cnnlab does)": lambda i: passes.fn("act_pool")(*args_),
                           "gated (labels under a profiler)": lambda i: gated(*args_)}, args.rounds, 300)
    return report("profiler-gate: one C pass call (the step makes 7)", medians, "always labelled (as cnnlab does)",
                  "gated (labels under a profiler)", 7, step_us(batches, args))


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
    model = create("lenet")
    for p in model.parameters():
        p.grad = torch.rand_like(p) * 1e-6
    optimizers = {"torch.optim.SGD": torch.optim.SGD(model.parameters(), lr=0.9),
                  "PlainSGD": __import__("cnnlab.optim", fromlist=["PlainSGD"]).PlainSGD(model.parameters(), lr=0.9)}
    step = report("plain-sgd: the optimizer's update, per step",
                  interleaved({k: (lambda i, o=o: o.step()) for k, o in optimizers.items()}, args.rounds, 2000),
                  "torch.optim.SGD", "PlainSGD", 1, step_us(batches, args))
    setup = ("import time, torch\nfrom torch import nn\nimport cnnlab.optim\nm = nn.Linear(2, 2)\n"
             "t = time.perf_counter()\n{}\nprint(time.perf_counter() - t)")
    construct = alternate({"torch.optim.SGD": setup.format("torch.optim.SGD(m.parameters(), lr=0.9)"),
                           "PlainSGD": setup.format("cnnlab.optim.PlainSGD(m.parameters(), lr=0.9)")}, args.rounds)
    saved = construct["torch.optim.SGD"] - construct["PlainSGD"]
    total = recipe_seconds(args)
    print(f"  constructing it in a fresh interpreter (median of {args.rounds}): torch.optim.SGD "
          f"{construct['torch.optim.SGD']:.3f} s, PlainSGD {construct['PlainSGD']:.3f} s: {saved:.3f} s saved, "
          f"{100 * saved / total:.1f} % of the {total:.1f} s recipe")
    return step + saved / total


def bench_imports(batches, args) -> float:
    base = "import time\nt = time.perf_counter()\nimport torch, numpy\n{}print(time.perf_counter() - t)"
    library = ("import cnnlab.train.run, cnnlab.augment, cnnlab.data, cnnlab.data.loader, cnnlab.inference, "
               "cnnlab.models, cnnlab.optim, cnnlab.kernels.lenet.native, cnnlab.lrfind, cnnlab.sweep\n")
    medians = alternate({"torch and numpy": base.format(""), "... and the library": base.format(library)},
                        args.rounds)
    extra = medians["... and the library"] - medians["torch and numpy"]
    total = recipe_seconds(args)
    print("\nimports: a fresh interpreter importing")
    for name, seconds in medians.items():
        print(f"  {name:<28} {seconds:9.3f} s")
    print(f"  the library's own modules: {extra:.3f} s, {100 * extra / total:.1f} % of the recipe: the most that "
          f"importing any of them inside functions could save (a run needs them all: it saves 0 % of cnnlab train)")
    return 0.0


def bench_compile(batches, args) -> float:
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
        model = create("vgg_mini", **config.model_options)
        steps[name] = build_step(StepPlan(channels_last=True, compile=compiled), model, config,
                                 loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1), batch_size=128)
    start = time.perf_counter()
    steps["compiled"](*batches[0])
    cold = time.perf_counter() - start
    medians = interleaved({k: (lambda i, s=s: s(*batches[i % len(batches)])) for k, s in steps.items()},
                          args.rounds, max(5, args.steps // 4))
    gain = report("compile: one step of the best-5min network (batch 128, channels-last, AdamW)", medians,
                  "eager", "compiled", 1, medians["eager"])
    print(f"  the first compiled step (the cold compile): {cold:.1f} s")
    return gain


def bench_folder_listing(batches, args) -> float:
    """The image-folder scan's stats: each name looked up in the open folder (``dir_fd``, Linux and macOS)
    against ``os.scandir``'s entries (the route Windows takes), on a 70,000-file class tree."""
    import tempfile
    from collections import Counter

    from cnnlab import portable
    from cnnlab.data.folder import _walk_files

    if not portable.Folder.FAST:
        print("\nfolder-listing: skipped, this system has no dir_fd")
        return float("nan")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for c in range(10):
            folder = Path(tmp) / f"class {c}"
            folder.mkdir()
            for i in range(7_000):
                (folder / f"{i:05d}.png").touch()

        def walk(fast: bool):
            def run(_):
                portable.Folder.FAST = fast
                found: list[str] = []
                _walk_files(tmp, frozenset(), Counter(), found, [])
                assert len(found) == 70_000
            return run

        try:
            medians = interleaved({"scandir entries (portable)": walk(False), "dir_fd (Linux, macOS)": walk(True)},
                                  args.rounds, 1)
        finally:
            portable.Folder.FAST = True
    print("\nfolder-listing: stats of a 70,000-file tree")
    for name, us in medians.items():
        print(f"  {name:<34} {us / 1e6:10.3f} s")
    slow, fast = medians["scandir entries (portable)"], medians["dir_fd (Linux, macOS)"]
    print(f"  saved: {(slow - fast) / 1e6:.3f} s of the portable route's {slow / 1e6:.3f} s: {100 * (slow - fast) / slow:+.1f} %")
    return (slow - fast) / slow


BENCHES = {"host-sums": bench_host_sums, "plain-sgd": bench_plain_sgd, "profiler-gate": bench_profiler_gate,
           "imports": bench_imports, "compile": bench_compile, "folder-listing": bench_folder_listing}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated, from {', '.join(BENCHES)}")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
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
    sys.stdout.reconfigure(line_buffering=True)
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
