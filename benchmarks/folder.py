"""Time to first batch from a 70,000-image PNG tree: cnnlab's ``--data`` (cold decode, then cached) vs the
book-style way of reading an image folder.

The tree is Fashion-MNIST written as PNGs by this script (``train/<class>/<n>.png`` and
``test/<class>/<n>.png``, 60,000 + 10,000 files) from the canonical IDX files.  The reference is what a
d2l / torchvision user writes for a folder: a ``Dataset`` whose ``__getitem__`` opens one file with
Pillow, converts it to ``L`` and then to a float tensor (``ToTensor``), behind
``torch.utils.data.DataLoader(batch_size=256, shuffle=True, num_workers=4)``; it pays that for every
epoch, so one epoch over all 70,000 files is measured.  cnnlab reads the tree once (parallel decode
into uint8, cached under the user cache) and yields its first batch; the cached run then reads the
cache instead.  All in one process, on the same files.

``--start-method spawn`` makes cnnlab decode as it does on macOS and Windows (spawned processes for a
split of at least ``SPAWN_MIN_IMAGES`` images, this process for a smaller one), ``fork`` as on Linux.
A spawned process runs this script's module level again, so torch is imported only where it is used:
a spawned decoder then pays what it pays under ``cnnlab``, not torch's import.

    python benchmarks/folder.py [--data-dir DIR] [--tree DIR] [--quick] [--start-method fork|spawn]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from _machine import DEFAULT_FASHION_MNIST, cpu_model  # benchmarks/ is on sys.path when a script here runs

warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores is the book's setting


class BookImageFolder:
    """One file at a time: open with Pillow, convert to L, then ``ToTensor`` (a float tensor / 255).  A
    map-style dataset (``__len__`` and ``__getitem__``, all a DataLoader asks of a ``Dataset``)."""

    def __init__(self, root: Path):
        self.items = []
        for split in sorted(p for p in root.iterdir() if p.is_dir()):
            classes = sorted(p.name for p in split.iterdir() if p.is_dir())
            for index, name in enumerate(classes):
                self.items += [(path, index) for path in sorted((split / name).iterdir())]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        import torch

        path, target = self.items[i]
        with Image.open(path) as img:
            picture = img.convert("L")
        x = torch.from_numpy(np.array(picture, np.uint8, copy=True))
        x = x.view(picture.size[1], picture.size[0], 1).permute((2, 0, 1)).contiguous()
        return x.to(dtype=torch.get_default_dtype()).div(255), target


def write_tree(data_dir: Path, root: Path, limit: int | None) -> int:
    """Fashion-MNIST as PNG files under ``root``; returns how many (kept between runs when complete)."""
    from cnnlab.data.idx import read_idx
    from cnnlab.data.registry import get_spec

    names = get_spec("fashion-mnist").classes
    total = 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")[:limit]
        labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")[:limit]
        marker = root / f".{split}-{len(images)}-complete"
        total += len(images)
        if marker.exists():
            continue
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / split / names[label] / f"{i:05d}.png")
        marker.touch()
    return total


def warm_page_cache(root: Path) -> None:
    """Read every file once, so both measurements read the tree from memory."""
    for path in root.rglob("*.png"):
        path.read_bytes()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding processes, DataLoader workers): on a
    shared machine, the work done, whatever share of the cores each approach got."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(func, *args):
    """(wall seconds, CPU seconds, result) of ``func(*args)``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = func(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def first_batch_seconds(root: Path) -> tuple[float, str]:
    from cnnlab.data.dataset import load_dataset
    from cnnlab.data.loader import BatchIterator
    from cnnlab.train.config import TrainConfig

    start = time.perf_counter()
    data = load_dataset(TrainConfig(data=str(root)), progress=False)
    batches = BatchIterator(*data.train, 256, shuffle=True, normalize=data.stats)
    X, y = next(iter(batches))
    assert X.shape == (256, 1, 28, 28)
    return time.perf_counter() - start, data.cache


def reference_epoch_seconds(root: Path) -> float:
    from torch.utils.data import DataLoader

    start = time.perf_counter()
    loader = DataLoader(BookImageFolder(root), batch_size=256, shuffle=True, num_workers=4)
    seen = 0
    for X, y in loader:
        seen += len(y)
    assert seen == len(loader.dataset)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_FASHION_MNIST,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--tree", type=Path, default=None,
                        help="where to write the PNG tree (kept for later runs; default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="5,000 + 5,000 images instead of 70,000")
    parser.add_argument("--start-method", choices=["fork", "spawn"], default=None,
                        help="how cnnlab starts its decoding processes (default: as on this system)")
    args = parser.parse_args()
    import PIL
    import torch

    import cnnlab
    from cnnlab import portable

    if args.start_method is not None:
        portable.worker_start_method = lambda: args.start_method
    method = portable.worker_start_method()

    load = os.getloadavg()[0]
    temporary = args.tree is None
    root = args.tree or Path(tempfile.mkdtemp(prefix="cnnlab-folder-bench-"))
    cache = Path(tempfile.mkdtemp(prefix="cnnlab-folder-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(cache)     # an empty user cache: the first load is cold
    try:
        started = time.perf_counter()
        n = write_tree(args.data_dir, root, 5000 if args.quick else None)
        print(f"PNG tree: {n:,d} files in {root} ({time.perf_counter() - started:.1f} s to write or check)")
        warm_page_cache(root)   # neither side pays the disk: the first to run would read it for both
        _, cold_cpu, (cold, state) = measured(first_batch_seconds, root)
        assert state == "written", state
        _, cached_cpu, (cached, state) = measured(first_batch_seconds, root)
        assert state == "hit", state
        reference, reference_cpu, _ = measured(reference_epoch_seconds, root)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"Pillow {PIL.__version__}, numpy {np.__version__}, cnnlab {cnnlab.__version__}")
    print(f"cnnlab's decoding processes start by {method}")
    print(f"load average before: {load:.1f} (other work on the machine slows everything here)")
    print("                                                                  wall       CPU (all processes)")
    print(f"book-style folder Dataset + DataLoader(num_workers=4), one epoch: {reference:8.2f} s {reference_cpu:8.2f} s")
    print(f"cnnlab --data, cold (decode + cache) to first batch:              {cold:8.2f} s {cold_cpu:8.2f} s  "
          f"ratio {reference / cold:.2f}x wall, {reference_cpu / cold_cpu:.2f}x CPU")
    print(f"cnnlab --data, cached to first batch:                             {cached:8.3f} s {cached_cpu:8.3f} s  "
          f"ratio {reference / cached:.0f}x wall")


if __name__ == "__main__":
    main()
