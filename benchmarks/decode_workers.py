"""How to spread an image folder's decoding over the cores: one process, threads, forked processes (Linux)
or spawned ones (macOS, Windows), each decoding the same files with cnnlab's own
:func:`cnnlab.data.decode.decode_chunk` in chunks of ``CHUNK`` images.

Forked processes and threads write into the output array itself; spawned ones send their chunks back,
as cnnlab's do.  Rounds are interleaved, medians printed with the ratio against one process, and every way's
array is checked against the first.  The main module is this script, whose module level imports only
the standard library, as ``python -m cnnlab`` is to a spawned process.

    python benchmarks/decode_workers.py --tree DIR [--rounds 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

WAYS = ("one process", "threads", "fork", "spawn")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode(way: str, paths: list[str], workers: int):
    """``paths`` (28 x 28 gray PNG files) as one uint8 array (N, 1, 28, 28), decoded the ``way`` given."""
    import mmap
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    import numpy as np

    from cnnlab.data import decode as decoder
    from cnnlab.data.folder import CHUNK

    shape = (len(paths), 1, 28, 28)
    tasks = [(i, paths[i:i + CHUNK], 1, 28, False) for i in range(0, len(paths), CHUNK)]
    if way == "fork":   # shared memory, as cnnlab.data.folder gives forked processes
        out = np.frombuffer(mmap.mmap(-1, int(np.prod(shape))), dtype=np.uint8).reshape(shape)
    else:
        out = np.zeros(shape, np.uint8)
    decoder.OUTPUT = None if way == "spawn" else out
    try:
        if way == "one process":
            for task in tasks:
                decoder.decode_chunk(task)
        elif way == "threads":
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(decoder.decode_chunk, tasks))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(way)) as pool:
                for start, array, _, _ in pool.map(decoder.decode_chunk, tasks):
                    if array is not None:
                        out[start:start + len(array)] = array
    finally:
        decoder.OUTPUT = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, required=True,
                        help="a PNG tree as benchmarks/folder.py writes it (written there if missing)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import multiprocessing

    import numpy as np
    import PIL

    import cnnlab
    from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs
    from folder import warm_page_cache, write_tree

    write_tree(args.data_dir or DEFAULT_FASHION_MNIST, args.tree, None)
    warm_page_cache(args.tree)
    workers = os.cpu_count() or 1
    ways = [w for w in WAYS if w not in ("fork", "spawn") or w in multiprocessing.get_all_start_methods()]
    train = sorted(str(p) for p in (args.tree / "train").rglob("*.png"))
    test = sorted(str(p) for p in (args.tree / "test").rglob("*.png"))
    sets = {f"{len(train):,d} files (train/)": train, f"{len(test):,d} files (test/)": test,
            "2,500 files (of test/)": test[:2500]}
    load = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {workers} cores ({workers} workers); python {sys.version.split()[0]}, "
          f"Pillow {PIL.__version__}, numpy {np.__version__}, cnnlab {cnnlab.__version__}; load average before: {load:.1f}")
    for name, paths in sets.items():
        times = {way: [] for way in ways}
        reference = None
        for _ in range(args.rounds):
            for way in ways:
                wall, cpu = time.perf_counter(), cpu_seconds()
                out = decode(way, paths, workers)
                times[way].append((time.perf_counter() - wall, cpu_seconds() - cpu))
                if reference is None:
                    reference = out
                assert np.array_equal(out, reference), way
        base = statistics.median(w for w, _ in times["one process"])
        print(f"\n{name}, median of {args.rounds} interleaved rounds:")
        for way, runs in times.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"  {way:12s} {wall:7.3f} s wall ({base / wall:4.2f}x one process)  {cpu:7.3f} s CPU   "
                  f"runs: {' '.join(f'{w:.2f}' for w, _ in runs)}")


if __name__ == "__main__":
    main()
