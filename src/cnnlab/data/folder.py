"""Image folders: one sub-folder per class, optionally under ``train/`` and ``test/`` (or ``val/``).

A folder is scanned once (following symbolic links, refusing loops), every image is opened with
:func:`cnnlab.images.open_image` and converted by :func:`cnnlab.images.to_8bit`, then resized with
Pillow to the chosen square size: the same pixels ``cnnlab predict`` would read.  Decoding runs in
one process per core with a progress bar; the result is a uint8 array (N, C, S, S) per split, which
:mod:`cnnlab.data.cache` keeps so that the next run reads it back in a fraction of a second.
"""

from __future__ import annotations

import os
from collections import Counter
from stat import S_ISREG
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File name endings read as images (what Pillow reads); other files are counted and ignored."""
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
"""Sub-folders that make a folder a split tree; the held-out one may be called test or val."""
DEFAULT_SIZE = 28
CHUNK = 256
"""Images per task handed to a decoding process."""


@dataclass
class Scan:
    """What an image folder holds, before any pixel is decoded."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    """split -> (path, class index) in a fixed order (class, then file name)."""
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    """path -> (size, mtime_ns), from the scan."""
    skipped: Counter = field(default_factory=Counter)
    """reason -> number of files ignored (not images, hidden)."""
    split_folders: dict[str, str] = field(default_factory=dict)
    """split -> the sub-folder it came from (``test`` or ``val``); empty for a flat class tree."""

    def identity(self) -> list[tuple[str, str, int, int]]:
        """(split, path relative to the root, size, mtime_ns) of every file: what the cache is keyed by."""
        prefix = len(str(self.root)) + 1
        return [(split, path[prefix:], *self.stats[path]) for split, items in self.files.items()
                for path, _ in items]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.files.values())


def _walk_files(folder: str, seen: frozenset, skipped: Counter, stats: dict) -> list[str]:
    """Every image file under ``folder`` (sorted, following links), its size and mtime into ``stats``; a
    link back to a folder already on the way is a loop: DataError naming it."""
    st = os.stat(folder)
    key = (st.st_dev, st.st_ino)
    if key in seen:
        raise DataError(f"{folder} leads back to a folder already read (a symbolic link loop); "
                        f"remove the link or point --data at a folder without loops")
    seen = seen | {key}
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError as exc:
        raise DataError(f"cannot read folder {folder}: {exc.strerror}; check its permissions") from None
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            skipped["hidden file or folder"] += 1
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            found.extend(_walk_files(entry.path, seen, skipped, stats))
        elif "." + name.rpartition(".")[2].lower() not in IMAGE_SUFFIXES or "." not in name:
            skipped["not an image file"] += 1
        else:
            try:
                info = entry.stat()
            except OSError:
                skipped["broken link or special file"] += 1
                continue
            if not S_ISREG(info.st_mode):
                skipped["broken link or special file"] += 1
                continue
            stats[entry.path] = (info.st_size, info.st_mtime_ns)
            found.append(entry.path)
    return found


def _class_tree(folder: Path, skipped: Counter, stats: dict, what: str) -> dict[str, list[str]]:
    """class name -> image files, for a folder of class sub-folders."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; --data takes an image folder, a .npz file or a folder of IDX files")
    st = folder.stat()
    seen = frozenset({(st.st_dev, st.st_ino)})
    classes: dict[str, list[str]] = {}
    loose = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped["hidden file or folder"] += 1
        elif entry.is_dir():
            classes[entry.name] = _walk_files(entry.path, seen, skipped, stats)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            loose += 1
        else:
            skipped["not an image file"] += 1
    if not classes:
        hint = (f" ({loose} images lie directly in it)" if loose else "")
        raise DataError(f"{what} {folder} has no class sub-folders{hint}; put each class's images in a "
                        f"sub-folder named after the class (e.g. {folder}/cat/1.png)")
    if loose:
        skipped["image outside a class folder"] += loose
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"class folder {folder / empty[0]} holds no images (PNG, JPEG, BMP, GIF, TIFF or WebP); "
                        f"add images or remove the folder")
    return classes


def scan_folder(root: str | os.PathLike) -> Scan:
    """The classes and files of an image folder; DataError (one line) for an empty folder, a class
    folder without images, a single class, train and test with different classes, a link loop."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    skipped: Counter = Counter()
    stats: dict[str, tuple[int, int]] = {}
    names = {e.name for e in os.scandir(root) if e.is_dir()}
    if not any(os.scandir(root)):
        raise DataError(f"{root} is empty; put one sub-folder of images per class in it "
                        f"(or train/ and test/ folders holding those)")
    split_folders = {}
    if "train" in names:
        split_folders["train"] = "train"
        for held in SPLIT_FOLDERS["test"]:
            if held in names:
                split_folders["test"] = held
                break
    trees = {}
    if split_folders:
        for split, name in split_folders.items():
            trees[split] = _class_tree(root / name, skipped, stats, f"{split} folder")
        ignored = names - set(split_folders.values())
        skipped["folder beside train/ and test/"] += len(ignored)
    else:
        trees["train"] = _class_tree(root, skipped, stats, "image folder")
    classes = sorted(trees["train"])
    if len(classes) < 2:
        raise DataError(f"{root} has a single class ({classes[0]!r}); a classifier needs at least two "
                        f"class sub-folders")
    if "test" in trees and sorted(trees["test"]) != classes:
        only_train = sorted(set(classes) - set(trees["test"]))
        only_test = sorted(set(trees["test"]) - set(classes))
        parts = ([f"only in train/: {', '.join(only_train)}"] if only_train else []) + \
                ([f"only in {split_folders['test']}/: {', '.join(only_test)}"] if only_test else [])
        raise DataError(f"{root}: train/ and {split_folders['test']}/ have different classes ({'; '.join(parts)}); "
                        f"give both the same class folders")
    index = {name: i for i, name in enumerate(classes)}
    files = {split: [(path, index[name]) for name in classes for path in tree[name]]
             for split, tree in trees.items()}
    skipped = Counter({k: v for k, v in skipped.items() if v})
    return Scan(root, classes, files, stats, skipped, split_folders)


# ---------------------------------------------------------------- decoding


def convert(img, channels: int, size: int) -> np.ndarray:
    """A PIL image as uint8 (C, size, size): :func:`cnnlab.images.to_8bit`, then Pillow's resize."""
    from PIL import Image

    from cnnlab.images import to_8bit

    img = to_8bit(img, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _header(path: str) -> tuple[tuple[int, int], str, bool]:
    """(size, mode, colour) of one file, for the provisional settings of a decode."""
    from cnnlab.images import is_colour, open_image

    img = open_image(path)
    return img.size, img.mode, is_colour(img)


def _decode_chunk(task):
    """Decode ``paths`` into one array, with each file's (size, mode, colour) as found; a file that fails
    gives its message instead (and, unless ``skip_bad``, ends the chunk)."""
    from cnnlab.images import is_colour, open_image

    paths, channels, size, skip_bad = task
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    found, bad = [], []
    for i, path in enumerate(paths):
        try:
            img = open_image(path)
            found.append((img.size, img.mode, is_colour(img)))
            out[i] = convert(img, channels, size)
        except DataError as exc:
            found.append(None)
            bad.append((i, str(exc)))
            if not skip_bad:
                break
    return out, found, bad


def _pool(n_tasks: int):
    """Worker processes for decoding (fork where the platform has it: no re-import of the library)."""
    import multiprocessing

    workers = max(1, min(os.cpu_count() or 1, n_tasks))
    if workers == 1:
        return None
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def _map(func, tasks: list, progress: bool, desc: str, unit_counts: list[int]):
    """``func`` over ``tasks`` in worker processes (in order), with a progress bar counting images."""
    from tqdm import tqdm

    pool = _pool(len(tasks))
    # No bar where stderr is not a terminal (logs, pipes): there it would only add lines before an error.
    with tqdm(total=sum(unit_counts), desc=desc, unit="img", disable=None if progress else True,
              leave=False) as bar:
        if pool is None:
            results = []
            for task, n in zip(tasks, unit_counts):
                results.append(func(task))
                bar.update(n)
            return results
        with pool:
            futures = [pool.submit(func, task) for task in tasks]
            results = []
            for future, n in zip(futures, unit_counts):
                results.append(future.result())
                bar.update(n)
            return results


def _chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass
class Survey:
    """Sizes and modes found in a folder's images."""

    sizes: Counter
    modes: Counter
    colour: int
    """How many images have colour."""

    @classmethod
    def of(cls, rows) -> "Survey":
        sizes, modes, colour = Counter(), Counter(), 0
        for row in rows:
            if row is not None:
                size, mode, has_colour = row
                sizes[size] += 1
                modes[mode] += 1
                colour += has_colour
        return cls(sizes, modes, colour)


def default_settings(found: Survey, image_size: int | None, channels: int | None) -> tuple[int, int]:
    """The size most images share (square ones first, else the larger side of the commonest size, else
    28) and 1 channel if every image is gray, else 3; given values win."""
    if image_size is None:
        square = Counter({s: n for s, n in found.sizes.items() if s[0] == s[1]})
        common = (square or found.sizes).most_common(1)
        image_size = max(common[0][0]) if common else DEFAULT_SIZE
    if channels is None:
        channels = 3 if found.colour else 1
    return image_size, channels


def check_memory(n: int, channels: int, size: int, where: str, available: int | None = None) -> None:
    """Refuse, before decoding, a dataset whose uint8 array would not fit in half the free memory."""
    need = n * channels * size * size
    available = available_memory() if available is None else available
    if available is not None and need > available // 2:
        raise DataError(f"{where}: {n:,d} images at {channels}x{size}x{size} need {need / 2**30:.1f} GiB, more than "
                        f"half the {available / 2**30:.1f} GiB of free memory; choose a smaller --image-size "
                        f"or --channels 1, or use a part of the folder")


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def decode(scan: Scan, image_size: int | None, channels: int | None, *, skip_bad: bool = False,
           progress: bool = True) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], Survey, int, int]:
    """Every image of the scan at ``image_size`` and ``channels`` (None: :func:`default_settings`):
    ``(split -> (uint8 images (N, C, S, S), int64 labels), messages of the files skipped, what was found,
    size, channels)``.

    One pass: the defaults are first guessed from one file per class and split, and the files decoded
    with that guess while their sizes and modes are recorded; only if the whole folder's defaults turn
    out otherwise is it decoded again.  An unreadable or corrupt image is a DataError naming it, unless
    ``skip_bad`` (then it is left out and counted)."""
    sample = [items[0][0] for items in scan.files.values() if items]
    sample += [path for items in scan.files.values() for (path, label), (_, previous) in
               zip(items[1:], items[:-1]) if label != previous]
    guess_rows = []
    for path in sample:
        try:
            guess_rows.append(_header(path))
        except DataError:
            guess_rows.append(None)
    size, chans = default_settings(Survey.of(guess_rows), image_size, channels)
    while True:
        splits, skipped, rows = _decode_all(scan, chans, size, skip_bad, progress)
        found = Survey.of(rows)
        exact = default_settings(found, image_size, channels)
        if exact == (size, chans):
            return splits, skipped, found, size, chans
        size, chans = exact


def _decode_all(scan: Scan, channels: int, size: int, skip_bad: bool, progress: bool):
    check_memory(scan.total, channels, size, str(scan.root))
    splits, skipped, rows = {}, [], []
    for split, items in scan.files.items():
        paths = [p for p, _ in items]
        labels = np.array([c for _, c in items], dtype=np.int64)
        chunks = _chunks(paths)
        tasks = [(chunk, channels, size, skip_bad) for chunk in chunks]
        results = _map(_decode_chunk, tasks, progress, f"decoding {split}", [len(c) for c in chunks])
        images = np.concatenate([r[0] for r in results]) if results else np.zeros((0, channels, size, size), np.uint8)
        keep = np.ones(len(paths), dtype=bool)
        offset = 0
        for (_, found, bad), chunk in zip(results, chunks):
            for i, message in bad:
                if not skip_bad:
                    raise DataError(f"{message} (--skip-bad-images leaves such files out)")
                keep[offset + i] = False
                skipped.append(message)
            rows.extend(found)
            offset += len(chunk)
        splits[split] = (images[keep], labels[keep])
    return splits, skipped, rows
