"""The book's recipe on an idle CPU and beside one other CPU-bound process, as cnnlab chooses its threads'
waiting and as OpenMP waits by default.

    python benchmarks/busy_machine.py [--epochs N] [--rounds N] [--data-dir DIR]

Each run is a whole ``cnnlab train`` process with the defaults (the book's recipe) for ``--epochs``
epochs, timed from launch to exit.  Four kinds alternate in every round (the order reversed every other
round): on the idle machine and beside a competing process (one Python loop, started a second before),
each with cnnlab's choice (nothing set: ``cnnlab.openmp`` watches the CPUs and picks) and with OpenMP's
default wait (``GOMP_SPINCOUNT=300000``, libgomp's own default count, which cnnlab keeps as the user's
setting).  Printed: the median seconds of each kind, each choice's busy/idle ratio (a fair share of two
cores is 2x) and the idle ratio of cnnlab's choice to OpenMP's default (1.0: no loss when idle), with the
machine, versions and the ``speed`` line of each kind's first run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
OPENMP_DEFAULT = {"GOMP_SPINCOUNT": "300000"}
KINDS = [("idle", "cnnlab"), ("idle", "openmp"), ("busy", "cnnlab"), ("busy", "openmp")]


@contextmanager
def competitor(load: str):
    """One CPU-bound process for the length of the block (none when idle)."""
    if load == "idle":
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        yield
    finally:
        proc.kill()
        proc.wait()


def run_once(load: str, choice: str, args, folder: Path) -> tuple[float, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    if choice == "openmp":
        env.update(OPENMP_DEFAULT)
    run_dir = folder / f"{load}-{choice}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "cnnlab", "train", "--epochs", str(args.epochs), "--no-progress",
           "--data-dir", str(args.data_dir), "--run-dir", str(run_dir)]
    with competitor(load):
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    speed = next((line for line in proc.stderr.splitlines() if line.startswith("speed: ")), "")
    closing = proc.stdout.strip().splitlines()[-3] if len(proc.stdout.strip().splitlines()) >= 3 else proc.stdout
    return seconds, speed, closing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_FASHION_MNIST)
    args = parser.parse_args()
    import torch  # noqa: PLC0415  only for its version: the runs are other processes

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
          f"torch {torch.__version__}; {args.epochs} epochs of the book's recipe, {args.rounds} rounds")
    times: dict[tuple[str, str], list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for load, choice in (KINDS if r % 2 == 0 else KINDS[::-1]):
                seconds, speed, closing = run_once(load, choice, args, Path(tmp))
                times[(load, choice)].append(seconds)
                print(f"round {r + 1} {load:4s} {choice:6s} {seconds:6.1f} s  | {closing} | {speed}", flush=True)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    for kind in KINDS:
        print(f"{kind[0]:4s} {kind[1]:6s} median {median[kind]:.1f} s  ({', '.join(f'{t:.1f}' for t in times[kind])})")
    for choice in ("cnnlab", "openmp"):
        print(f"busy/idle, {choice}: {median[('busy', choice)] / median[('idle', choice)]:.2f}x")
    print(f"idle, cnnlab's choice against OpenMP's default: {median[('idle', 'cnnlab')] / median[('idle', 'openmp')]:.2f}x "
          f"the time")
    print(f"busy, OpenMP's default against cnnlab's choice: {median[('busy', 'openmp')] / median[('busy', 'cnnlab')]:.2f}x "
          f"the time")


if __name__ == "__main__":
    main()
