"""How fast is convolution from scratch? cnnlab.ops versus the book's loops and PyTorch's operators.

    python benchmarks/ops.py [--quick] [--threads N]

Three implementations of the same numbers, timed in the same run:

* loop       -- ``corr2d_loop`` / ``pool2d_loop``, one Python iteration per output value (the
                book's code); timed on single images only, a batch of 256 would take minutes;
* vectorised -- ``corr2d`` / ``conv2d`` / ``pool2d``, strided ``unfold`` views and one matrix
                product, no Python loop over positions (what cnnlab uses);
* native     -- ``torch.nn.functional.conv2d`` / ``max_pool2d`` / ``avg_pool2d``.

Each time is the best of several interleaved repeats of a loop long enough to be measured.
The target: the vectorised convolution within 10x of the native one at 28x28 with a
5x5 kernel and batch 256.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script here runs
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab import ops  # noqa: E402

TARGET_RATIO = 10.0


def calls_per_sample(fn: Callable[[], object], min_time: float) -> int:
    """How many back-to-back calls of ``fn`` take at least ``min_time`` seconds (after a warm-up call)."""
    fn()  # warm-up: allocator, thread pool, first-call dispatch
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return number
        number *= 2 if elapsed == 0 else max(2, int(min_time / elapsed * 1.2))


def best_seconds_per_call(variants: dict[str, Callable[[], object]], min_time: float,
                          repeats: int) -> dict[str, float]:
    """Fastest mean time per call of each variant over ``repeats`` samples.

    The variants take turns within each repeat, so a burst of load from other processes hits
    them alike; the minimum is the sample least disturbed by such load (as ``timeit`` advises).
    """
    numbers = {name: calls_per_sample(fn, min_time) for name, fn in variants.items()}
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / numbers[name])
    return best


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:8.2f} s "
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds * 1e6:8.1f} us"


def forward_backward(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run() -> None:
        fn(*leaves).sum().backward()
        for t in leaves:
            t.grad = None

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timing runs (rougher numbers)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    min_time, repeats = (0.05, 3) if args.quick else (0.2, 7)

    print(f"python {platform.python_version()}, torch {torch.__version__}, CPU {cpu_model()} "
          f"({os.cpu_count()} logical cores), torch threads {torch.get_num_threads()}")
    print(f"float32, best of {repeats} interleaved repeats; ratio = time / native time")
    g = torch.Generator().manual_seed(0)

    def time_row(label: str, variants: dict[str, Callable[[], object]]) -> dict[str, float]:
        times = best_seconds_per_call(variants, min_time, repeats)
        native = times["native"]
        cells = "  ".join(f"{name} {fmt(t)} ({t / native:7.1f}x)" for name, t in times.items())
        print(f"{label:<44} {cells}")
        return times

    print("\nsingle image (the book's 2-D functions)")
    for size, k in [(28, 5), (64, 3)]:
        X = torch.rand(size, size, generator=g)
        K = torch.rand(k, k, generator=g)
        time_row(f"corr2d {size}x{size}, {k}x{k} kernel", {
            "loop": lambda: ops.corr2d_loop(X, K),
            "vectorised": lambda: ops.corr2d(X, K),
            "native": lambda: F.conv2d(X[None, None], K[None, None]),
        })
    X = torch.rand(28, 28, generator=g)
    for mode, native in [("max", F.max_pool2d), ("avg", F.avg_pool2d)]:
        time_row(f"pool2d {mode} 28x28, 2x2 window, stride 2", {
            "loop": lambda: ops.pool2d_loop(X, 2, mode, stride=2),
            "vectorised": lambda: ops.pool2d(X, 2, mode, stride=2),
            "native": lambda: native(X[None, None], 2, stride=2),
        })

    print("\nbatch 256 (LeNet's layers on Fashion-MNIST-sized images)")
    results = {}
    for label, c_in, c_out, size, k, pad in [("conv 1->6 28x28, 5x5 kernel", 1, 6, 28, 5, 0),
                                              ("conv 1->6 28x28, 5x5 kernel, padding 2", 1, 6, 28, 5, 2),
                                              ("conv 6->16 14x14, 5x5 kernel", 6, 16, 14, 5, 0)]:
        X = torch.rand(256, c_in, size, size, generator=g)
        K = torch.rand(c_out, c_in, k, k, generator=g)
        b = torch.rand(c_out, generator=g)
        results[label] = time_row(label, {
            "vectorised": lambda: ops.conv2d(X, K, b, padding=pad),
            "native": lambda: F.conv2d(X, K, b, padding=pad),
        })
        time_row("  forward + backward", {
            "vectorised": forward_backward(lambda x, w, bias: ops.conv2d(x, w, bias, padding=pad), X, K, b),
            "native": forward_backward(lambda x, w, bias: F.conv2d(x, w, bias, padding=pad), X, K, b),
        })
    X = torch.rand(256, 6, 28, 28, generator=g)
    for mode, native in [("max", F.max_pool2d), ("avg", F.avg_pool2d)]:
        time_row(f"pool2d {mode} 6x28x28, 2x2 window, stride 2", {
            "vectorised": lambda: ops.pool2d(X, 2, mode, stride=2),
            "native": lambda: native(X, 2, stride=2),
        })
        time_row("  forward + backward", {
            "vectorised": forward_backward(lambda x: ops.pool2d(x, 2, mode, stride=2), X),
            "native": forward_backward(lambda x: native(x, 2, stride=2), X),
        })

    target = results["conv 1->6 28x28, 5x5 kernel"]
    ratio = target["vectorised"] / target["native"]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\ntarget: vectorised conv2d within {TARGET_RATIO:g}x of F.conv2d at 28x28, 5x5 kernel, batch 256: "
          f"{verdict} ({ratio:.1f}x)")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
