"""The book's full recipe on the real Fashion-MNIST, once per seed, as a user runs it.

    python benchmarks/recipe.py [--seeds 0 1 2] [--epochs 10] [--data-dir DIR] [-- extra train flags]

Each seed is a separate ``cnnlab train`` process with the defaults (LeNet, batch 256, SGD lr 0.9,
10 epochs, Xavier); the table reports its closing numbers, examples/sec (training loop, the book's
measure), wall time of the whole process (start-up, data loading and evaluation included) and its
peak resident memory.  The reference is the band the book reports for this recipe: test accuracy
about 0.78 to 0.82.
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
import time
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
BOOK_BAND = (0.78, 0.82)


def hardware() -> str:
    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores{gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def run_seed(seed: int, epochs: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "cnnlab", "train", "--seed", str(seed), "--epochs", str(epochs),
               "--run-dir", str(run), "--no-progress", *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        wall = time.perf_counter() - start
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.stdout.close(), proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"seed {seed} failed:\n{err}")
        summary = json.loads((run / "summary.json").read_text())
        summary.update(seed=seed, wall=wall, peak_mib=usage.ru_maxrss / 1024, closing=out.splitlines()[-3:-1])
        return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("extra", nargs="*", help="extra `cnnlab train` flags (after --)")
    args = parser.parse_args()
    print(f"# cnnlab recipe benchmark, {time.strftime('%Y-%m-%d')}")
    print(f"# {hardware()}")
    print(f"# cnnlab train --epochs {args.epochs} {' '.join(args.extra)}")
    rows = [run_seed(s, args.epochs, args.extra) for s in args.seeds]
    print()
    print("| seed | loss | train acc | test acc | examples/sec | wall s | peak MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['seed']} | {r['train_loss']:.3f} | {r['train_acc']:.3f} | {r['test_acc']:.3f} | "
              f"{r['examples_per_sec']:,.0f} | {r['wall']:.1f} | {r['peak_mib']:.0f} |")
    accs = [r["test_acc"] for r in rows]
    print()
    print(f"test acc mean {statistics.mean(accs):.3f} (min {min(accs):.3f}, max {max(accs):.3f}); "
          f"book's band {BOOK_BAND[0]:.2f}-{BOOK_BAND[1]:.2f}: "
          f"{sum(BOOK_BAND[0] - 0.01 <= a <= BOOK_BAND[1] + 0.01 for a in accs)}/{len(accs)} seeds within it (+-0.01)")
    for r in rows:
        print(f"seed {r['seed']}: {' / '.join(r['closing'])}")


if __name__ == "__main__":
    main()
