"""A run's data from any source, in one form: :func:`load_dataset`.

``data`` (``--data PATH``) is an image folder, a ``.npz`` file or a folder of IDX files; without it the
registry dataset (``--dataset``) is used as before.  Either way the result holds uint8 tensors
(N, C, S, S) per split, the class names, the channels and size, and per-channel normalisation
statistics of the training split; ``val_fraction`` holds out a seeded, stratified validation split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data import cache, get_spec
from cnnlab.data.arrays import (as_images, check_label_range, idx_files, load_idx_folder, load_npz,
                                unnamed_classes)
from cnnlab.data.cifar import CLASSES, is_cifar, load_cifar
from cnnlab.data.decode import check_conversion
from cnnlab.data.folder import decode, scan_folder
from cnnlab.data.sources import locate, read_split
from cnnlab.data.split import stratified_split
from cnnlab.errors import ConfigError, DataError
from cnnlab.train.config import MAX_IMAGE_SIDE, positive_int

DEFAULT_VAL_WITHOUT_TEST = 0.1
"""Held out for validation when the data has no test split and no --val-fraction was given."""


@dataclass
class Dataset:
    """A run's splits as uint8 (N, C, S, S) / int64 (N,) CPU tensors, and what describes them."""

    source: str
    """``registry``, ``folder``, ``npz``, ``idx`` or ``cifar``."""
    name: str
    classes: list[str]
    channels: int
    size: int
    train: tuple[Any, Any]
    val: tuple[Any, Any] | None
    test: tuple[Any, Any] | None
    stats: tuple[list[float], list[float]]
    """Per-channel (mean, std) of the training split's pixels in [0, 1]."""
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """reason -> files left out (not images, hidden, unreadable with --skip-bad-images)."""
    cache: str | None = None
    """``hit`` (read from the cache), ``written`` (decoded now and cached), or None (not cached)."""
    fingerprint: str | None = None
    """A hash of the data's content as found: the registry's checksums where the files were verified, else
    the files' paths, sizes and modification times (what the conversion cache is keyed by)."""
    location: str | None = None
    """The folder or file the data was read from."""
    found: dict[str, Any] = field(default_factory=dict)
    """What the files were before conversion: sizes and modes seen (image folders)."""


def data_kind(path: Path) -> str:
    """``npz``, ``idx`` or ``folder`` for a --data PATH; DataError if it is none of them."""
    if not path.exists():
        raise DataError(f"--data {path} does not exist; give an image folder, a .npz file or a folder of IDX files")
    if is_cifar(path):
        return "cifar"
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"--data {path} is a file but not a .npz; give an image folder, a .npz file or a "
                        f"folder of IDX files")
    try:
        if idx_files(path) is not None:
            return "idx"
    except PermissionError as exc:
        raise DataError(f"cannot read folder {path}: {exc.strerror}; check its permissions") from None
    return "folder"


def _histogram(values: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """Counts of each uint8 value, a block at a time: ``np.bincount`` widens its input to int64, and over a
    whole split at once that copy made it 17x slower (1.1 s for 60,000 images of 28 x 28)."""
    counts = np.zeros(256, dtype=np.int64)
    flat = np.ascontiguousarray(values).reshape(-1)
    for start in range(0, flat.size, block):
        counts += np.bincount(flat[start:start + block], minlength=256)
    return counts


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and standard deviation of uint8 (N, C, H, W) images, scaled to [0, 1]."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for c in range(images.shape[1]):
        counts = _histogram(images[:, c]).astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total) if total else 0.0
        var = float((counts * (values - mean) ** 2).sum() / total) if total else 0.0
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-6))
    return means, stds


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _from_folder(path: Path, image_size, channels, skip_bad, progress) -> dict[str, Any]:
    scan = scan_folder(path)
    settings = {"image_size": image_size, "channels": channels, "skip_bad_images": bool(skip_bad)}
    files = scan.fingerprint()
    key = cache.cache_key(str(path.resolve()), files, settings)
    cached = cache.load(key)
    if cached is not None:
        arrays, meta = cached
        return {**meta, "arrays": arrays, "cache": "hit", "fingerprint": files}
    splits, bad, found, size, chans = decode(scan, image_size, channels, skip_bad=skip_bad, progress=progress)
    skipped = dict(scan.skipped)
    if bad:
        skipped["unreadable or corrupt image"] = len(bad)
    arrays = {}
    for split, (x, y) in splits.items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    meta = {"classes": scan.classes, "channels": chans, "size": size, "skipped": skipped,
            "train_stats": channel_stats(arrays["train_x"]),
            "bad_files": bad[:20], "split_folders": scan.split_folders,
            "found": {"sizes": {f"{w}x{h}": n for (w, h), n in found.sizes.most_common()},
                      "modes": dict(found.modes.most_common()), "colour_images": found.colour}}
    written = cache.save(key, arrays, meta)
    return {**meta, "arrays": arrays, "cache": "written" if written else None, "fingerprint": files}


def _from_arrays(path: Path, kind: str, image_size, channels, verify: bool = True) -> dict[str, Any]:
    if kind == "npz":
        splits, classes = load_npz(path)
        identity = [_file_identity(path)]
        label_names = {split: f"{path}: y_{split}" for split in splits}
    elif kind == "cifar":
        splits, classes = load_cifar(path, verify=verify), list(CLASSES)
        identity = [_file_identity(p) for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() \
            else [_file_identity(path)]
    else:
        splits, classes = load_idx_folder(path), None
        identity = [_file_identity(p) for p in sorted(path.iterdir()) if p.is_file()]
        label_names = {split: str(file) for (split, part), file in idx_files(path).items() if part == "labels"}
    if classes is None:
        classes = unnamed_classes(splits, label_names)
    check_label_range(splits, len(classes), str(path))
    first = splits["train"][0]
    own_channels = 1 if first.ndim == 3 or first.shape[3] == 1 else 3
    size = image_size or max(first.shape[1:3])
    chans = channels or own_channels
    for split, (x, _) in splits.items():
        if x.shape[1:] != first.shape[1:]:
            raise DataError(f"{path}: {split} images have shape {x.shape[1:]}, train images {first.shape[1:]}; "
                            f"give both splits the same image shape")
    check_conversion(sum(len(y) for _, y in splits.values()), chans, size, str(path))
    unchanged = own_channels == chans and first.shape[1:3] == (size, size) and (first.ndim == 3 or first.shape[3] < 4)
    files = cache.fingerprint(identity)
    meta = {"classes": classes, "channels": chans, "size": size, "skipped": {}, "fingerprint": files,
            "found": {"sizes": {f"{first.shape[2]}x{first.shape[1]}": sum(len(y) for _, y in splits.values())},
                      "modes": {f"{first.dtype} {'gray' if own_channels == 1 else 'colour'}": 1}}}
    if unchanged:
        arrays = {}
        for split, (x, y) in splits.items():
            arrays[f"{split}_x"], arrays[f"{split}_y"] = as_images(x, chans, size), y
        return {**meta, "arrays": arrays, "cache": None}
    key = cache.cache_key(str(path.resolve()), files, {"image_size": size, "channels": chans})
    cached = cache.load(key)
    if cached is not None:
        return {**meta, "arrays": cached[0], "cache": "hit"}
    arrays = {}
    for split, (x, y) in splits.items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = as_images(x, chans, size), y
    written = cache.save(key, arrays, meta)
    return {**meta, "arrays": arrays, "cache": "written" if written else None}


def check_data_settings(image_size, channels, val_fraction) -> None:
    """ConfigError, one line naming the setting, for an image size, channels or validation fraction no data
    can be converted to or split by."""
    if image_size is not None and not positive_int(image_size, MAX_IMAGE_SIDE):
        raise ConfigError(f"image size must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE}, "
                          f"got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 (gray) or 3 (colour), got {channels!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 <= val_fraction < 1:
        raise ConfigError(f"validation fraction must be a number from 0 up to (not including) 1, got {val_fraction!r}")


def read_source(data: str | os.PathLike, *, image_size: int | None = None, channels: int | None = None,
                skip_bad_images: bool = False, progress: bool = True, verify: bool = True) -> dict[str, Any]:
    """The converted arrays of a --data PATH and what describes them (see :func:`load_dataset`)."""
    check_data_settings(image_size, channels, 0.0)
    return _read_source(data, image_size, channels, skip_bad_images, progress, verify)


def _read_source(data, image_size, channels, skip_bad_images, progress, verify) -> dict[str, Any]:
    path = Path(data).expanduser()
    kind = data_kind(path)
    if kind == "folder":
        result = _from_folder(path, image_size, channels, skip_bad_images, progress)
    else:
        result = _from_arrays(path, kind, image_size, channels, verify)
    result["kind"] = kind
    return result


def load_dataset(config, *, progress: bool = True) -> Dataset:
    """The run's data (see the module's docstring), with the config's limits and validation split applied:
    its settings checked, the data found, then read."""
    check_data_settings(config.image_size, config.channels, config.val_fraction)
    location = locate(config.dataset, config.data_dir, verify=config.verify) if config.data is None else None
    return read_dataset(config, location, progress=progress)


def read_dataset(config, location, *, progress: bool = True) -> Dataset:
    """The data of a checked config, from where it was found (``location``: a registry dataset's
    :class:`cnnlab.data.sources.Location`; None for --data, read from its path)."""
    notes = []
    if config.data is None:
        spec = get_spec(config.dataset)
        train, test = read_split(location, "train"), read_split(location, "test")
        source, name, classes = "registry", config.dataset, list(spec.classes)
        channels, size = spec.image_shape[0], spec.image_shape[1]
        skipped, cache_state, found = {}, None, {}
        where = str(location.folder)
        fingerprint = (cache.fingerprint(sorted(f.sha256 or f.gz_md5 or "" for f in spec.files.values()))
                       if location.verified else
                       cache.fingerprint([_file_identity(p) for _, p in sorted(location.files.items())]))
        if config.image_size not in (None, size) or config.channels not in (None, channels):
            check_conversion(len(train[1]) + len(test[1]), config.channels or channels, config.image_size or size,
                             config.dataset)
            train, test = (_reconverted(s, config.channels or channels, config.image_size or size) for s in (train, test))
            channels, size = config.channels or channels, config.image_size or size
    else:
        result = _read_source(config.data, config.image_size, config.channels, config.skip_bad_images, progress,
                              config.verify)
        arrays = result["arrays"]
        source, name, classes = result["kind"], str(config.data), list(result["classes"])
        channels, size = int(result["channels"]), int(result["size"])
        skipped, cache_state, found = dict(result["skipped"]), result["cache"], dict(result.get("found", {}))
        where, fingerprint = str(Path(config.data).expanduser().resolve()), result.get("fingerprint")
        train = tuple(torch.from_numpy(np.ascontiguousarray(arrays[f"train_{p}"])) for p in "xy")
        test = (tuple(torch.from_numpy(np.ascontiguousarray(arrays[f"test_{p}"])) for p in "xy")
                if "test_x" in arrays else None)
    train = (train[0], train[1].to(torch.int64))
    fraction = float(config.val_fraction)
    if test is None and fraction == 0:
        fraction = DEFAULT_VAL_WITHOUT_TEST
        notes.append(f"{name} has no test split: holding out {fraction:g} of the training data for validation "
                     f"(--val-fraction sets how much); no test accuracy is reported")
    elif test is None:
        notes.append(f"{name} has no test split: validation accuracy only")
    val = None
    if fraction > 0:
        keep, held = stratified_split(train[1].numpy(), fraction, config.seed)
        if held.size == 0:
            raise ConfigError(f"--val-fraction {config.val_fraction:g} holds out no images of the "
                              f"{train[1].shape[0]} training images; use a larger fraction")
        keep_t, held_t = torch.from_numpy(keep), torch.from_numpy(held)
        val = (train[0][held_t], train[1][held_t])
        train = (train[0][keep_t], train[1][keep_t])
    if config.train_limit:
        train = (train[0][:config.train_limit], train[1][:config.train_limit])
    if config.test_limit and test is not None:
        test = (test[0][:config.test_limit], test[1][:config.test_limit])
    # The whole training split's statistics come with the cache (computing them is most of a cached load).
    whole = config.data is not None and val is None and not config.train_limit and result.get("train_stats")
    stats = tuple(result["train_stats"]) if whole else channel_stats(train[0].numpy())
    return Dataset(source, name, classes, channels, size, train, val, test, stats, notes, skipped, cache_state,
                   found=found, fingerprint=fingerprint, location=where)


def _reconverted(split, channels: int, size: int):
    """A registry split (N, C, H, W) at another size or channel count, through the image conversion."""
    images, labels = split
    return reconverted_images(images, channels, size), labels


def reconverted_images(images, channels: int, size: int):
    """uint8 (N, C, H, W) images as (N, channels, size, size), through the image conversion."""
    return torch.from_numpy(as_images(images.numpy().transpose(0, 2, 3, 1), channels, size))

