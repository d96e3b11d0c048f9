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
    files: dict[str, list[tuple[Path, int]]]
    """split -> (path, class index) in a fixed order (class, then file name)."""
    skipped: Counter = field(default_factory=Counter)
    """reason -> number of files ignored (not images, hidden)."""
    split_folders: dict[str, str] = field(default_factory=dict)
    """split -> the sub-folder it came from (``test`` or ``val``); empty for a flat class tree."""

    def identity(self) -> list[tuple[str, str, int, int]]:
        """(split, path relative to the root, size, mtime_ns) of every file: what the cache is keyed by."""
        rows = []
        for split, items in self.files.items():
            for path, _ in items:
                st = path.stat()
                rows.append((split, str(path.relative_to(self.root)), st.st_size, st.st_mtime_ns))
        return rows

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.files.values())


def _walk_files(folder: Path, seen: set[tuple[int, int]], skipped: Counter) -> list[Path]:
    """Every image file under ``folder`` (sorted, following links); a link back to a folder already
    on the way is a loop: DataError naming it."""
    st = folder.stat()
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
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped["hidden file or folder"] += 1
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            found.extend(_walk_files(path, seen, skipped))
        elif not entry.is_file():
            skipped["broken link or special file"] += 1
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
        else:
            skipped["not an image file"] += 1
    return found


def _class_tree(folder: Path, seen: set, skipped: Counter, what: str) -> dict[str, list[Path]]:
    """class name -> image files, for a folder of class sub-folders."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; --data takes an image folder, a .npz file or a folder of IDX files")
    st = folder.stat()
    seen = seen | {(st.st_dev, st.st_ino)}
    classes: dict[str, list[Path]] = {}
    loose = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped["hidden file or folder"] += 1
        elif entry.is_dir():
            classes[entry.name] = _walk_files(Path(entry.path), seen, skipped)
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
            trees[split] = _class_tree(root / name, set(), skipped, f"{split} folder")
        ignored = names - set(split_folders.values())
        skipped["folder beside train/ and test/"] += len(ignored)
    else:
        trees["train"] = _class_tree(root, set(), skipped, "image folder")
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
    return Scan(root, classes, files, skipped, split_folders)


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


def _header(path: Path) -> tuple[tuple[int, int], str, bool] | str:
    """(size, mode, colour) from the file's header, or why it cannot be read."""
    from PIL import Image

    from cnnlab.images import GRAY_MODES, is_colour, open_image

    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
            if mode in GRAY_MODES:
                return size, mode, False
            if mode not in ("P", "PA"):
                return size, mode, True
        return size, mode, is_colour(open_image(path))
    except Exception:   # noqa: BLE001 - the decoding pass names the file and the reason
        try:
            open_image(path)
        except DataError as exc:
            return str(exc)
        return f"{path} could not be read"


def _headers_chunk(paths: list[Path]):
    return [_header(p) for p in paths]


def _decode_chunk(task):
    """Decode ``paths`` into one array; a file that fails gives its message instead of pixels."""
    from cnnlab.images import open_image

    paths, channels, size, skip_bad = task
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    bad = []
    for i, path in enumerate(paths):
        try:
            out[i] = convert(open_image(path), channels, size)
        except DataError as exc:
            if not skip_bad:
                return out, [(i, str(exc))]
            bad.append((i, str(exc)))
    return out, bad


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
    """Sizes and modes found in a folder's headers, and the files that cannot be read."""

    sizes: Counter
    modes: Counter
    colour: int
    """How many images have colour."""
    unreadable: list[str]


def survey(scan: Scan, progress: bool = True) -> Survey:
    """Read every file's header (in parallel): its size, mode and whether it has colour."""
    paths = [path for items in scan.files.values() for path, _ in items]
    chunks = _chunks(paths, 1024)
    results = _map(_headers_chunk, chunks, progress, "reading headers", [len(c) for c in chunks])
    sizes, modes, colour, unreadable = Counter(), Counter(), 0, []
    for rows in results:
        for row in rows:
            if isinstance(row, str):
                unreadable.append(row)
                continue
            size, mode, has_colour = row
            sizes[size] += 1
            modes[mode] += 1
            colour += has_colour
    return Survey(sizes, modes, colour, unreadable)


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


def decode(scan: Scan, channels: int, size: int, *, skip_bad: bool = False, progress: bool = True
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """split -> (uint8 images (N, C, S, S), int64 labels); and the messages of the files skipped.

    An unreadable or corrupt image is a DataError naming it, unless ``skip_bad`` (then it is left out
    and counted)."""
    check_memory(scan.total, channels, size, str(scan.root))
    splits, skipped = {}, []
    for split, items in scan.files.items():
        paths = [p for p, _ in items]
        labels = np.array([c for _, c in items], dtype=np.int64)
        chunks = _chunks(paths)
        tasks = [(chunk, channels, size, skip_bad) for chunk in chunks]
        results = _map(_decode_chunk, tasks, progress, f"decoding {split}", [len(c) for c in chunks])
        images = np.concatenate([r[0] for r in results]) if results else np.zeros((0, channels, size, size), np.uint8)
        keep = np.ones(len(paths), dtype=bool)
        offset = 0
        for (chunk_images, bad), chunk in zip(results, chunks):
            for i, message in bad:
                if not skip_bad:
                    raise DataError(f"{message} (--skip-bad-images leaves such files out)")
                keep[offset + i] = False
                skipped.append(message)
            offset += len(chunk)
        splits[split] = (images[keep], labels[keep])
    return splits, skipped
