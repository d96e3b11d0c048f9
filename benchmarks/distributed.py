"""Training throughput with 1 and N processes (torchrun + DDP), reported as a scaling ratio.

    python benchmarks/distributed.py [--quick] [--data-dir DIR]

Each configuration is a real ``torchrun --standalone -m cnnlab train`` launch of the book's
LeNet recipe (batch 256, lr 0.9).  Throughput is the run's own ``examples_per_sec`` (training
examples per second of training-loop time, from summary.json: start-up and evaluation excluded),
so the ratio isolates what extra processes buy during training.  On the CPU the cores are shared
out: each of N processes gets cores // N threads, and the single-process reference is the better
of 1 thread and all cores.  On a machine with several GPUs the same is measured with one GPU per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]


def measure(nproc: int, device: str, train_args: list[str], threads: int) -> float:
    """examples/sec of one launch with ``nproc`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cnnlab", "train", "--device", device, "--no-progress", "--run-dir", str(run_dir),
               *train_args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"launch with {nproc} process(es) on {device} failed:\n{proc.stderr[-2000:]}")
        return json.loads((run_dir / "summary.json").read_text())["examples_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12,000 training images, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="launches per configuration (mean reported)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: cnnlab's usual search)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    train_args = ["--epochs", "1", "--test-limit", "1000"]
    if args.quick:
        train_args += ["--train-limit", "12000"]
    if args.data_dir:
        train_args += ["--data-dir", args.data_dir]
    cores = os.cpu_count() or 1

    print(f"python {platform.python_version()}, torch {torch.__version__}, CPU {cpu_model()} "
          f"({cores} logical cores), {repeats} launch(es) per row, "
          f"{'12,000' if args.quick else '60,000'} training images, batch 256")
    print(f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine "
          f"slows multi-threaded runs most)")
    # (device, processes, threads per process); the 1-process reference is the better of 1 thread
    # and all cores, so the ratio is against the best single process, not a weak one.
    setups = [("cpu", 1, 1), ("cpu", 1, cores), ("cpu", 2, max(1, cores // 2))]
    setups = list(dict.fromkeys(setups))
    gpus = torch.cuda.device_count()
    if gpus > 1:
        print(f"GPUs: {gpus} x {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
        setups += [("cuda", 1, 1), ("cuda", gpus, 1)]
    else:
        print(f"GPUs: {gpus} (multi-GPU rows need at least 2)")
    results: dict[tuple[str, int, int], float] = {}
    for device, nproc, threads in setups:
        rates = [measure(nproc, device, train_args, threads) for _ in range(repeats)]
        results[device, nproc, threads] = statistics.mean(rates)
        print(f"{device:>4} {nproc} process(es) x {threads} thread(s): {results[device, nproc, threads]:8.0f} "
              f"examples/s (runs: {', '.join(f'{r:.0f}' for r in rates)})")
    for device in dict.fromkeys(d for d, _, _ in setups):
        best_single = max(rate for (d, n, _), rate in results.items() if d == device and n == 1)
        for (d, n, t), rate in results.items():
            if d == device and n > 1:
                print(f"{device}: {n} processes = {rate / best_single:.2f}x the best single process "
                      f"({best_single:.0f} examples/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
