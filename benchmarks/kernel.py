"""One training step of the book's LeNet on the CPU, three ways, timed interleaved in one process.

    python benchmarks/kernel.py [--batch 256] [--rounds 5] [--steps 50] [--precision auto|fp32|bf16]

* plain       -- PyTorch's layers and autograd (``nn.Sequential`` LeNet, float32): what
                 ``cnnlab train --kernel off --channels-last off`` runs;
* kernel      -- ``LeNetKernel`` with its passes in PyTorch operators (``CNNLAB_NO_NATIVE`` path);
* kernel + C  -- ``LeNetKernel`` with its passes in C (``cnnlab.kernels.lenet.native``), the default.

Each step is forward, loss, backward and a plain SGD update on a real Fashion-MNIST batch.  The
variants run in turns for ``--rounds`` rounds of ``--steps`` steps, the order rotating each round;
the table shows each one's fastest and median round in ms per step and the ratios of the medians.
The kernel variants use the precision ``cnnlab train`` would (bf16 on CPUs with native bf16).
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

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.data import load_split  # noqa: E402
from cnnlab.device import cpu_has_native_bf16  # noqa: E402
from cnnlab.kernels.lenet import LeNetKernel, TorchPasses, native  # noqa: E402
from cnnlab.models import create  # noqa: E402
from cnnlab.optim import PlainSGD  # noqa: E402
from cnnlab.train.engine import init_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--data-dir", default=str(DEFAULT_FASHION_MNIST), help="folder with Fashion-MNIST's IDX files")
    args = p.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
        args.precision, torch.bfloat16 if cpu_has_native_bf16() else torch.float32)

    images, labels = load_split("fashion-mnist", "train", args.data_dir, download=False)
    X, y = images[:args.batch].float().div_(255), labels[:args.batch]
    torch.manual_seed(0)
    reference = create("lenet")
    init_weights(reference, "xavier")

    def variant(kind):
        model = create("lenet")
        model.load_state_dict(reference.state_dict())
        opt = PlainSGD(model.parameters(), lr=0.9)
        if kind == "plain":
            loss_fn = torch.nn.CrossEntropyLoss()

            def forward_backward():
                loss_fn(model(X), y).backward()
        else:
            passes, why = native.load(native.STORAGE[dtype]) if kind == "kernel + C" else (TorchPasses(), None)
            if passes is None:
                sys.exit(f"the C passes are unavailable: {why}")
            kernel = LeNetKernel(model, dtype, passes)

            def forward_backward():
                kernel.forward_backward(X, y)

        def step():
            opt.zero_grad(set_to_none=True)
            forward_backward()
            opt.step()
        return step

    steps = {kind: variant(kind) for kind in ("plain", "kernel", "kernel + C")}
    for step in steps.values():       # warm-up: buffers, first-call costs
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    order = list(steps)
    for r in range(args.rounds):
        for kind in order[r % 3:] + order[:r % 3]:   # each variant follows each other one in turn
            step = steps[kind]
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[kind].append((time.perf_counter() - start) / args.steps * 1e3)

    print(f"python {platform.python_version()}, torch {torch.__version__}, CPU {cpu_model()}, "
          f"{os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    print(f"LeNet step, batch {args.batch}, kernel precision {str(dtype).removeprefix('torch.')}, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved")
    plain = statistics.median(times["plain"])
    print(f"{'variant':<12} {'fastest ms':>10} {'median ms':>10} {'plain / this':>13}")
    for kind, values in times.items():
        median = statistics.median(values)
        print(f"{kind:<12} {min(values):10.2f} {median:10.2f} {plain / median:12.2f}x")
    print(f"C passes: {statistics.median(times['kernel']) / statistics.median(times['kernel + C']):.2f}x "
          f"the kernel's PyTorch passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
