"""One CPU training step of several networks in NCHW and channels-last (NHWC), fp32 and bf16, interleaved.

    python benchmarks/layouts.py [--batch 256] [--rounds 9] [--steps 10] [--models NAME,...]

Why: ``choose_step`` turns channels-last on for convolutional networks on the CPU (and bf16 with it
on CPUs with native bf16 dot products).  That pays for the zoo's wider networks, but oneDNN's NHWC
convolutions on a handful of channels (the book's LeNet has 6 and 16) are slower than NCHW; this
measures where the line lies.  Each variant is the step ``choose_step`` builds with those settings
(``kernel=off``), run on a real Fashion-MNIST batch; variants take turns for ``--rounds`` rounds of
``--steps`` steps, the order rotating each round; the table shows each one's median and fastest round
in ms per step and NCHW fp32 / the variant, by medians.

Networks: the zoo's by name, and ``book-bn``, the book's LeNet with batch norm (d2l 7.5, concise form:
no padding on the first convolution, 16 * 4 * 4 inputs to the first dense layer).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cnnlab.data import load_split  # noqa: E402
from cnnlab.models import create  # noqa: E402
from cnnlab.train.config import TrainConfig  # noqa: E402
from cnnlab.train.engine import init_weights  # noqa: E402
from cnnlab.train.steps import choose_step  # noqa: E402
from book_chapter7 import bn_lenet  # noqa: E402 - tests/book_chapter7.py: the book's code, executed

DEFAULT_MODELS = "lenet,book-bn,lenet_bn,lenet_bn:16-32,lenet_wide,vgg_mini,nin_mini"
VARIANTS = (("fp32", "off"), ("fp32", "on"), ("bf16", "off"), ("bf16", "on"))


def build(spec: str) -> nn.Module:
    """``book-bn``, a zoo name, or ``name:C1-C2`` (a LeNet with those channel counts)."""
    if spec == "book-bn":
        return bn_lenet()
    name, _, channels = spec.partition(":")
    options = {"channels": [int(c) for c in channels.split("-")]} if channels else {}
    return create(name, **options)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    p.add_argument("--data-dir", default=str(DEFAULT_FASHION_MNIST), help="folder with Fashion-MNIST's IDX files")
    args = p.parse_args()

    images, labels = load_split("fashion-mnist", "train", args.data_dir, download=False)
    X, y = images[:args.batch].float().div_(255), labels[:args.batch]
    print(f"python {platform.python_version()}, torch {torch.__version__}, CPU {cpu_model()}, "
          f"{os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"training step, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, interleaved; "
          f"ms per step, median (fastest)")
    print(f"{'network':<16} {'min conv ch':>11} " + " ".join(f"{p + ' ' + ('NHWC' if c == 'on' else 'NCHW'):>18}"
                                                            for p, c in VARIANTS))
    for spec in args.models.split(","):
        steps = {}
        for precision, channels_last in VARIANTS:
            torch.manual_seed(0)
            model = build(spec)
            init_weights(model)
            config = TrainConfig(lr=0.05, precision=precision, channels_last=channels_last, kernel="off")
            steps[(precision, channels_last)] = choose_step(config, model, torch.device("cpu"),
                                                            loss_fn=nn.CrossEntropyLoss(), batch_size=args.batch)
        for step in steps.values():      # warm-up: oneDNN's primitives, first-call costs
            for _ in range(2):
                step(X, y)
        times: dict = {key: [] for key in steps}
        order = list(steps)
        for r in range(args.rounds):
            for key in order[r % len(order):] + order[:r % len(order)]:
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[key](X, y)
                times[key].append((time.perf_counter() - start) / args.steps * 1e3)
        narrowest = min(m.out_channels for m in build(spec).modules() if isinstance(m, nn.Conv2d))
        base = statistics.median(times[VARIANTS[0]])
        cells = []
        for key in VARIANTS:
            median = statistics.median(times[key])
            cells.append(f"{median:6.1f} ({min(times[key]):5.1f}) {base / median:4.2f}x")
        print(f"{spec:<16} {narrowest:>11} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
