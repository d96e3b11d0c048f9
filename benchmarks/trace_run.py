"""What one ``cnnlab train`` touches: each check and data lookup it runs, how often, and the files and
functions of cnnlab it calls.

    python benchmarks/trace_run.py [--data-dir DIR] [--resume] [-- TRAIN FLAGS...]

Runs ``cnnlab train --epochs 1`` (plus the flags given) in this process under a profiler hook that records
every call into cnnlab's own code; with ``--resume``, a run of one epoch is made first (not traced) and
``cnnlab train --resume RUN --epochs 2`` is traced.  A check or lookup that runs more than once is a fact with more than
one owner; the counts below should all be 1 (``resolve`` may be 0 where nothing is resolved).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from _machine import DEFAULT_FASHION_MNIST  # benchmarks/ is on sys.path when a script here runs

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

WATCHED = {
    # (module, function): what it is
    ("cnnlab.train.run", "check_run"): "the run's checks",
    ("cnnlab.train.config", "TrainConfig.validate"): "the config's own checks",
    ("cnnlab.data.dataset", "check_data_settings"): "image size, channels, validation fraction",
    ("cnnlab.models.registry", "check_model"): "the model builds for the data",
    ("cnnlab.device", "resolve_device"): "the device",
    ("cnnlab.data.sources", "locate"): "finding the dataset's files",
    ("cnnlab.data.sources", "_Stamps.__init__"): "reading the verification cache",
    ("cnnlab.train.checkpoint", "run_reference"): "a run named on the command line",
    ("cnnlab.train.config", "TrainConfig.from_run"): "a run's saved settings",
    ("cnnlab.data.dataset", "read_dataset"): "reading the data",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_FASHION_MNIST))
    p.add_argument("--resume", action="store_true", help="trace resuming a run instead of starting one")
    p.add_argument("flags", nargs="*", help="more flags for cnnlab train (after --)")
    args = p.parse_args()
    from cnnlab.cli.main import main as cnnlab

    calls: collections.Counter = collections.Counter()
    files: set[str] = set()
    functions: set[tuple[str, str]] = set()
    root = str(SRC / "cnnlab")

    def hook(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(root):
            return
        module = frame.f_globals.get("__name__", "")
        files.add(code.co_filename)
        functions.add((code.co_filename, code.co_qualname))
        if (module, code.co_qualname) in WATCHED:
            calls[(module, code.co_qualname)] += 1

    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(tmp) / "run")
        argv = ["train", "--epochs", "1", "--no-progress", "--data-dir", args.data_dir, "--run-dir", run, *args.flags]
        if args.resume:
            if cnnlab(argv) != 0:
                return 1
            argv = ["train", "--resume", run, "--epochs", "2", "--no-progress"]
        start = time.perf_counter()
        sys.setprofile(hook)
        try:
            status = cnnlab(argv)
        finally:
            sys.setprofile(None)
        seconds = time.perf_counter() - start
    print(f"\ncnnlab {' '.join(argv[:3])} ... (exit {status}, {seconds:.1f} s): {len(files)} files, "
          f"{len(functions)} functions of cnnlab called")
    for key, what in WATCHED.items():
        print(f"  {calls[key]:3d}  {key[0]}.{key[1]}  ({what})")
    return status


if __name__ == "__main__":
    sys.exit(main())
