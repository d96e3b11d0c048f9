"""Image folders: one sub-folder per class, optionally under ``train/`` and ``test/`` (or ``val/``).

A folder is scanned once (following symbolic links, refusing loops), every image is opened with
:func:`cnnlab.images.open_image` and converted by :func:`cnnlab.images.to_8bit`, then resized with
Pillow to the chosen square size: the same pixels ``cnnlab predict`` would read.  Decoding runs in
one process per core (:func:`_pool` says when not) with a progress bar; the result is a uint8 array (N, C, S, S) per split, which
:mod:`cnnlab.data.cache` keeps so that the next run reads it back in a fraction of a second.
What a decoding process runs is :mod:`cnnlab.data.decode`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG

import numpy as np
from tqdm import tqdm

from cnnlab import portable
from cnnlab.data import decode as decoder
from cnnlab.errors import DataError
from cnnlab.images import is_colour, open_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File name endings read as images (what Pillow reads); other files are counted and ignored."""
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}
"""Sub-folders that make a folder a split tree; the held-out one may be called test or val."""
DEFAULT_SIZE = 28
MAX_FOLDER_DEPTH = 100
"""Most folders an image may lie below the data's root: far beyond any dataset's layout, and well within
the recursion a scan may use (1,100 nested folders ended in RecursionError)."""
CHUNK = 256
"""Images per task handed to a decoding process."""


@dataclass
class Scan:
    """What an image folder holds, before any pixel is decoded."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    """split -> (path, class index) in a fixed order (class, then file name)."""
    stats: dict[str, list[int]] = field(default_factory=dict)
    """split -> [size, mtime_ns, size, mtime_ns, ...] of its files, in the order of ``files``: flat, as
    the cache key hashes them."""
    skipped: Counter = field(default_factory=Counter)
    """reason -> number of files ignored (not images, hidden)."""
    split_folders: dict[str, str] = field(default_factory=dict)
    """split -> the sub-folder it came from (``test`` or ``val``); empty for a flat class tree."""

    def fingerprint(self) -> str:
        """A hash of every file's split, path relative to the root, class, size and mtime_ns: what the cache
        is keyed by.  (Hashed as packed arrays: JSON of 70,000 tuples took longer than reading the cache.)"""
        prefix = len(str(self.root)) + 1
        digest = hashlib.sha256()
        for split, items in self.files.items():
            digest.update(f"{split}\0{len(items)}\0".encode())
            digest.update("\0".join(path[prefix:] for path, _ in items).encode("utf-8", "surrogateescape"))
            digest.update(np.array([label for _, label in items], dtype=np.int64).tobytes())
            digest.update(np.array(self.stats[split], dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.files.values())


def _walk_files(folder: str, seen: frozenset, skipped: Counter, found: list[str], stamps: list[int]) -> None:
    """Every image file under ``folder`` (sorted, following links) onto ``found``, its size and mtime onto
    ``stamps``; a link back to a folder already on the way is a loop: DataError naming it.  (A stat per
    file is most of a cached load: :class:`cnnlab.portable.Folder` makes each as cheap as the system allows.)"""
    try:
        listing = portable.Folder(folder)
    except PermissionError as exc:
        raise DataError(f"cannot read folder {folder}: {exc.strerror}; check its permissions") from None
    with listing:
        if listing.key in seen:
            raise DataError(f"{folder} leads back to a folder already read (a symbolic link loop); "
                            f"remove the link or point --data at a folder without loops")
        seen = seen | {listing.key}
        if len(seen) > MAX_FOLDER_DEPTH:
            raise DataError(f"{folder} lies more than {MAX_FOLDER_DEPTH} folders deep; keep the images within "
                            f"{MAX_FOLDER_DEPTH} levels of class folders (or point --data at a folder nearer them)")
        stat, prefix = listing.stat, folder + os.sep   # the loop runs once per file: nothing in it that need not be
        for name in listing.names:
            if name[0] == ".":
                skipped["hidden file or folder"] += 1
                continue
            try:
                info = stat(name)
            except OSError:
                skipped["broken link or special file"] += 1
                continue
            if S_ISDIR(info.st_mode):
                _walk_files(prefix + name, seen, skipped, found, stamps)
            elif "." not in name or "." + name.rpartition(".")[2].lower() not in IMAGE_SUFFIXES:
                skipped["not an image file"] += 1
            elif not S_ISREG(info.st_mode):
                skipped["broken link or special file"] += 1
            else:
                found.append(prefix + name)
                stamps.append(info.st_size)
                stamps.append(info.st_mtime_ns)


def _is_folder(listing: portable.Folder, name: str) -> bool:
    """Whether ``name`` in ``listing`` is a folder (a link to one too; a broken link is not)."""
    try:
        return S_ISDIR(listing.stat(name).st_mode)
    except OSError:
        return False


def _class_tree(folder: Path, skipped: Counter, what: str) -> dict[str, tuple[list[str], list[int]]]:
    """class name -> (image files, their flat sizes and mtimes), for a folder of class sub-folders."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; --data takes an image folder, a .npz file or a folder of IDX files")
    classes: dict[str, tuple[list[str], list[int]]] = {}
    loose = 0
    with portable.Folder(str(folder)) as listing:
        seen = frozenset({listing.key})
        for name in listing.names:
            if name.startswith("."):
                skipped["hidden file or folder"] += 1
            elif _is_folder(listing, name):
                classes[name] = ([], [])
                _walk_files(os.path.join(folder, name), seen, skipped, *classes[name])
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                loose += 1
            else:
                skipped["not an image file"] += 1
    if not classes:
        hint = (f" ({loose} images lie directly in it)" if loose else "")
        raise DataError(f"{what} {folder} has no class sub-folders{hint}; put each class's images in a "
                        f"sub-folder named after the class (e.g. {folder}/cat/1.png)")
    if loose:
        skipped["image outside a class folder"] += loose
    empty = [name for name, (files, _) in classes.items() if not files]
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
    with portable.Folder(str(root)) as listing:
        everything = listing.names
        names = {name for name in everything if _is_folder(listing, name)}
    if not everything:
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
            trees[split] = _class_tree(root / name, skipped, f"{split} folder")
        ignored = names - set(split_folders.values())
        skipped["folder beside train/ and test/"] += len(ignored)
    else:
        trees["train"] = _class_tree(root, skipped, "image folder")
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
    files = {split: [(path, index[name]) for name in classes for path in tree[name][0]]
             for split, tree in trees.items()}
    stats = {split: [v for name in classes for v in tree[name][1]] for split, tree in trees.items()}
    skipped = Counter({k: v for k, v in skipped.items() if v})
    return Scan(root, _class_names(root, classes), files, stats, skipped, split_folders)


def class_name(folder_name: str) -> str:
    """The class name a run records and shows for a class folder: its name, with bytes that are not UTF-8
    (a folder named in another encoding; Python keeps them as lone surrogates, which no file, plot or
    console can write) shown as ``\\xff``.  The files are still read through the folder's own name."""
    return folder_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _class_names(root: Path, folder_names: list[str]) -> list[str]:
    """:func:`class_name` of each folder; DataError when two folders would show as one class."""
    names = [class_name(n) for n in folder_names]
    if len(set(names)) < len(names):
        twin = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{root}: two class folders are both shown as {twin!r} (one of them is named in bytes that "
                        f"are not UTF-8); rename one of them")
    return names


# ---------------------------------------------------------------- decoding


def _header(path: str) -> tuple[tuple[int, int], str, bool]:
    """(size, mode, colour) of one file, for the provisional settings of a decode."""
    img = open_image(path)
    return img.size, img.mode, is_colour(img)


SPAWN_MIN_IMAGES = 30_000
"""The fewest images worth spawned decoding processes (macOS, Windows).  Spawned processes start fresh
interpreters and import the decoder, about 0.16 s, which decoding (about 18 us an image) repays only in
bulk: on 2 cores, 60,000 PNGs took 0.84 s in two spawned processes against 1.08 s in one, 10,000 took
0.27 s against 0.18 s; they break even near 24,000, and processes start more slowly on Windows than here
(``benchmarks/decode_workers.py``, ``benchmarks/RESULTS.md``).  Threads gain nothing: the per-file work
holds the GIL (60,000 took 1.40 s in two threads)."""


def _pool(n_images: int, n_tasks: int,
          nbytes: int) -> tuple[ProcessPoolExecutor | None, portable.SharedBuffer | None]:
    """``(worker processes for decoding, the buffer they decode into)``, as
    :func:`cnnlab.portable.worker_pool` makes them (where they share this process's memory, a buffer;
    elsewhere they send their images back); ``(None, None)`` where this process decodes alone: one core or
    one task, too few images to repay spawned processes, or a main script that spawned processes would run
    again (a one-line note says so)."""
    workers = max(1, min(os.cpu_count() or 1, n_tasks))
    if workers == 1:
        return None, None
    method = portable.worker_start_method()
    if not portable.workers_share_memory(method) and n_images < SPAWN_MIN_IMAGES:
        return None, None
    if method is None:
        print(f"note: decoding {n_images:,d} images in one process: worker processes would start by running "
              f"{portable.unguarded_main_script()} again; put its work under `if __name__ == \"__main__\":` "
              f"to decode on every core", file=sys.stderr)
        return None, None
    return portable.worker_pool(workers, method, nbytes)


def _decode_into(paths: list[str], channels: int, size: int, skip_bad: bool, progress: bool, desc: str):
    """``paths`` decoded in worker processes, with a progress bar counting images: ``(uint8 (N, C, S, S),
    Counter of what was found, [(index, message)] of the files that failed)``."""
    tasks = [(i, paths[i:i + CHUNK], channels, size, skip_bad) for i in range(0, len(paths), CHUNK)]
    shape = (len(paths), channels, size, size)
    pool, buffer = _pool(len(paths), len(tasks), int(np.prod(shape)))
    images = (np.frombuffer(buffer, dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)
              if buffer is not None else np.zeros(shape, np.uint8))
    found, bad = Counter(), []
    # Decoded in place where the decoding sees this array: in this process, or in workers sharing its memory.
    decoder.OUTPUT = images if pool is None or buffer is not None else None
    try:
        # No bar where stderr is not a terminal (logs, pipes): there it would only add lines before an error.
        with tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress else True, leave=False) as bar, \
                (pool or contextlib.nullcontext()):
            results = (map(decoder.decode_chunk, tasks) if pool is None
                       else (f.result() for f in [pool.submit(decoder.decode_chunk, task) for task in tasks]))
            for (start, array, chunk_found, chunk_bad), (_, chunk, *_) in zip(results, tasks):
                if array is not None:   # a worker without shared memory sent its images back
                    images[start:start + len(chunk)] = array
                found.update(chunk_found)
                bad.extend((start + i, message) for i, message in chunk_bad)
                bar.update(len(chunk))
    finally:
        decoder.OUTPUT = None
    return images, found, bad


@dataclass
class Survey:
    """Sizes and modes found in a folder's images."""

    sizes: Counter
    modes: Counter
    colour: int
    """How many images have colour."""

    @classmethod
    def of(cls, rows: Counter) -> "Survey":
        """From a Counter of (size, mode, colour) rows, one per image read."""
        sizes, modes, colour = Counter(), Counter(), 0
        for (size, mode, has_colour), n in rows.items():
            sizes[size] += n
            modes[mode] += n
            colour += n * has_colour
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
    guess_rows = Counter()
    for path in sample:
        with contextlib.suppress(DataError):
            guess_rows[_header(path)] += 1
    size, chans = default_settings(Survey.of(guess_rows), image_size, channels)
    while True:
        splits, skipped, rows = _decode_all(scan, chans, size, skip_bad, progress)
        found = Survey.of(rows)
        exact = default_settings(found, image_size, channels)
        if exact == (size, chans):
            return splits, skipped, found, size, chans
        size, chans = exact


def _decode_all(scan: Scan, channels: int, size: int, skip_bad: bool, progress: bool):
    decoder.check_conversion(scan.total, channels, size, str(scan.root))
    splits, skipped, rows = {}, [], Counter()
    for split, items in scan.files.items():
        paths = [p for p, _ in items]
        labels = np.array([c for _, c in items], dtype=np.int64)
        images, found, bad = _decode_into(paths, channels, size, skip_bad, progress, f"decoding {split}")
        rows.update(found)
        keep = np.ones(len(paths), dtype=bool)
        for i, message in bad:
            if not skip_bad:
                raise DataError(f"{message} (--skip-bad-images leaves such files out)")
            keep[i] = False
            skipped.append(message)
        splits[split] = (images[keep], labels[keep])   # a copy: the shared memory is let go
    return splits, skipped, rows
