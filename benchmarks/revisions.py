"""Two revisions of cnnlab timed against each other in one run: the book's recipe and a cached image-folder load.

    python benchmarks/revisions.py --before REV [--rounds 3] [--data-dir DIR] [--tree DIR]

``REV`` (a commit, tag or branch) is checked out into a temporary git worktree; this checkout is the
other side.  Each round runs every job once from each revision, the order alternating, each a fresh
process timed from launch to exit:

* ``recipe``: ``cnnlab train`` with its defaults (LeNet, Fashion-MNIST, 10 epochs), whose closing lines
  must be the same from both revisions;
* ``folder``: loading a class-folder tree of PNGs (``--tree``, as ``benchmarks/folder.py --tree`` writes
  it) from a cache that revision made in an untimed first load.

It prints each run, the medians and the ratio before / now (above 1: now is faster).  A shared machine's
speed drifts from hour to hour; alternating in one run keeps that drift out of the ratio.
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
from pathlib import Path

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
LOAD_FOLDER = ("import sys\nfrom cnnlab.data.dataset import load_dataset\nfrom cnnlab.train.config import TrainConfig\n"
               "load_dataset(TrainConfig(data=sys.argv[1]), progress=False)\n")


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def closing_lines(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if line.startswith("loss ")), "?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the revision to compare with this checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_FASHION_MNIST, help="Fashion-MNIST's IDX files")
    p.add_argument("--tree", type=Path, default=None, help="a class-folder tree of PNGs (no folder job without)")
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    args.tree = args.tree.resolve() if args.tree is not None else None
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python {platform.python_version()}, CPU "
          f"{cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="cnnlab-revisions-") as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tmp / "before"), args.before],
                       check=True, capture_output=True)
        try:
            sides = {"before": tmp / "before" / "src", "now": REPO / "src"}
            envs = {}
            for side, src in sides.items():
                (tmp / side / "cache").mkdir(parents=True, exist_ok=True)
                envs[side] = {**os.environ, "PYTHONPATH": str(src), "XDG_CACHE_HOME": str(tmp / side / "cache")}
            runs = iter(range(10**6))
            jobs = {"recipe": lambda side: [sys.executable, "-m", "cnnlab", "train", "--data-dir", str(args.data_dir),
                                            "--no-progress", "--run-dir", str(tmp / side / f"run{next(runs)}")]}
            if args.tree is not None:
                jobs["folder"] = lambda side: [sys.executable, "-c", LOAD_FOLDER, str(args.tree)]
                for side in sides:   # the cache each revision reads, and its own first run's costs
                    timed(jobs["folder"](side), envs[side], tmp)
            for side in sides:       # bytecode, the C passes' build, matplotlib's font cache
                timed([sys.executable, "-m", "cnnlab", "train", "--data-dir", str(args.data_dir), "--no-progress",
                       "--epochs", "1", "--run-dir", str(tmp / side / "warm")], envs[side], tmp)
            seconds: dict[tuple[str, str], list[float]] = {}
            lines: dict[str, set[str]] = {side: set() for side in sides}
            for r in range(args.rounds):
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    for job, cmd in jobs.items():
                        took, out = timed(cmd(side), envs[side], tmp)
                        seconds.setdefault((job, side), []).append(took)
                        if job == "recipe":
                            lines[side].add(closing_lines(out))
                        print(f"round {r + 1} {side:6s} {job:6s} {took:7.2f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "before")],
                           capture_output=True)
    print(f"\nmedians of {args.rounds} rounds (before {args.before} / now):")
    for job in jobs:
        before, now = (statistics.median(seconds[(job, side)]) for side in ("before", "now"))
        print(f"  {job:6s} {before:7.2f} s / {now:7.2f} s = {before / now:.3f}")
    print(f"closing lines: before {sorted(lines['before'])}, now {sorted(lines['now'])}")
    return 0 if lines["before"] == lines["now"] else 1


if __name__ == "__main__":
    sys.exit(main())
