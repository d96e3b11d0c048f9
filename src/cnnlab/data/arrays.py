"""Datasets given as arrays: a ``.npz`` file in the layout of Keras' ``mnist.npz``, or a folder of IDX
files named as MNIST's (KMNIST, EMNIST, your own).

Both give per split uint8 images (N, H, W) or (N, H, W, C) and integer labels; :func:`as_images`
then brings them to (N, C, S, S) at the chosen size and channels through the same conversion as
image files (:func:`cnnlab.data.decode.convert`), skipping it where nothing changes.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.decode import convert, exceeded_memory
from cnnlab.data.idx import MAX_DEFLATE_RATIO, read_idx
from cnnlab.errors import DataError

IDX_PATTERNS = {
    ("train", "images"): re.compile(r"(^|[-_.])train[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?$"),
    ("train", "labels"): re.compile(r"(^|[-_.])train[-_.]labels[-_.]idx1[-_.]ubyte(\.gz)?$"),
    ("test", "images"): re.compile(r"(^|[-_.])(t10k|test)[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?$"),
    ("test", "labels"): re.compile(r"(^|[-_.])(t10k|test)[-_.]labels[-_.]idx1[-_.]ubyte(\.gz)?$"),
}
"""MNIST's names (``train-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte``), with any prefix
(``emnist-letters-train-images-idx3-ubyte.gz``) and ``test`` for ``t10k``."""


def idx_files(folder: str | os.PathLike) -> dict[tuple[str, str], Path] | None:
    """The IDX files of a folder by (split, part), or None when it has no training images and labels."""
    folder = Path(folder)
    found: dict[tuple[str, str], Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        for key, pattern in IDX_PATTERNS.items():
            if entry.is_file() and pattern.search(entry.name):
                if key in found:
                    raise DataError(f"{folder} holds two {key[0]} {key[1]} IDX files ({found[key].name} and "
                                    f"{entry.name}); keep one dataset per folder")
                found[key] = Path(entry.path)
    if ("train", "images") not in found or ("train", "labels") not in found:
        return None
    if (("test", "images") in found) != (("test", "labels") in found):
        have = "images" if ("test", "images") in found else "labels"
        raise DataError(f"{folder} has test {have} but not test {'labels' if have == 'images' else 'images'}; "
                        f"add the missing IDX file or remove the other")
    return found


def load_idx_folder(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    files = idx_files(folder)
    if files is None:
        raise DataError(f"{folder} holds no train-images-idx3-ubyte / train-labels-idx1-ubyte files")
    splits = {}
    for split in ("train", "test"):
        if (split, "images") in files:
            images, labels = read_idx(files[(split, "images")]), read_idx(files[(split, "labels")])
            splits[split] = _checked(images, labels, f"{files[(split, 'images')]}", f"{files[(split, 'labels')]}")
    return splits


def load_npz(path: str | os.PathLike) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str] | None]:
    """split -> (images, labels) of a Keras-style ``.npz``, and its class names if it has a ``classes``
    array; one-line DataError for anything else (pickled objects are refused, never loaded)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:   # zipfile: an unknown method
        raise DataError(f"{path} is not a .npz archive NumPy can read ({type(exc).__name__}); "
                        f"save it with numpy.savez") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not the x_train, y_train, x_test, y_test of a .npz; "
                        f"save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    with archive:
        missing = [k for k in ("x_train", "y_train") if k not in archive.files]
        if missing:
            raise DataError(f"{path} has no {', '.join(missing)} (it holds {', '.join(archive.files) or 'nothing'}); "
                            f"a .npz needs x_train and y_train, and x_test and y_test for a test split")
        if ("x_test" in archive.files) != ("y_test" in archive.files):
            raise DataError(f"{path} has only one of x_test and y_test; give both or neither")

        def read(key):
            try:
                _check_member(archive.zip, key, f"{path}: {key}")
                return archive[key]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, MemoryError,
                    NotImplementedError) as exc:
                raise DataError(f"{path}: {key} is damaged ({type(exc).__name__}: {str(exc)[:80]}); save the file "
                                f"again") from exc

        splits = {}
        for split in ("train", "test"):
            if f"x_{split}" in archive.files:
                splits[split] = _checked(read(f"x_{split}"), read(f"y_{split}"), f"{path}: x_{split}",
                                         f"{path}: y_{split}")
        classes = None
        if "classes" in archive.files:
            names = read("classes")
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise DataError(f"{path}: classes must be a 1-D array of names, got {names.dtype} {names.shape}")
            # Shown and written as text: bytes that are not UTF-8, and lone surrogates, as \\xff and \\udcff.
            classes = [n.decode("utf-8", "backslashreplace") if isinstance(n, bytes)
                       else str(n).encode("utf-8", "backslashreplace").decode("utf-8") for n in names]
    return splits, classes


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_member(archive: zipfile.ZipFile, key: str, name: str) -> None:
    """Refuse, from its header, a .npz member NumPy would unpickle or allocate more for than the file holds:
    an object array (Python objects are never loaded), or a shape whose bytes are not the member's size
    (a header declaring 1.4 TiB, a truncated member), or a member larger than its compressed bytes can
    hold or than half the free memory."""
    info = archive.getinfo(f"{key}.npy" if f"{key}.npy" in archive.namelist() else key)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise DataError(f"{name} declares {info.file_size:,d} bytes, more than its {info.compress_size:,d} compressed "
                        f"bytes can hold; the file is damaged: save it again")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in NPY_HEADERS:
            raise DataError(f"{name} is a NumPy file of version {version[0]}.{version[1]}; save plain numeric arrays "
                            f"with numpy.savez")
        shape, _, dtype = NPY_HEADERS[version](f)
        header = f.tell()
    if dtype.hasobject:
        raise DataError(f"{name} holds Python objects (a pickle), which cnnlab does not load; save plain numeric "
                        f"arrays")
    declared = math.prod(shape) * dtype.itemsize
    if header + declared != info.file_size:
        held = max(info.file_size - header, 0)
        raise DataError(f"{name} declares shape {shape} of {dtype} ({declared:,d} bytes) but holds {held:,d} bytes; "
                        f"the file is {'truncated' if held < declared else 'damaged'}: save it again")
    available = exceeded_memory(declared)
    if available is not None:
        raise DataError(f"{name} holds {declared:,d} bytes, more than half the {available / 2**30:.1f} GiB of free "
                        f"memory; save a smaller part of the data")


def _checked(images: np.ndarray, labels: np.ndarray, image_name: str, label_name: str):
    """images as uint8 (N, H, W[, C]) and labels as int64 (N,); DataError naming the array otherwise."""
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
        raise DataError(f"{image_name} has shape {images.shape}; images must be (N, H, W) or (N, H, W, C) "
                        f"with C of 1, 3 or 4")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{label_name} has shape {labels.shape}; labels must be one class number per image, "
                        f"shape ({images.shape[0]},)")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise DataError(f"{label_name} holds labels that are not whole numbers; labels are class numbers 0, 1, ...")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{label_name} holds {labels.dtype} labels; labels are integer class numbers 0, 1, ...")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{label_name} holds negative labels (smallest {labels.min()}); labels are class "
                        f"numbers 0, 1, ...")
    if images.dtype == np.uint8:
        pass
    elif images.dtype.kind == "f":
        if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise DataError(f"{image_name} holds float pixels outside [0, 1] (or NaN); give uint8 0..255 or "
                            f"floats in [0, 1]")
        images = np.rint(images * 255).astype(np.uint8)
    else:
        raise DataError(f"{image_name} holds {images.dtype} pixels; give uint8 0..255 or floats in [0, 1]")
    if images.shape[0] == 0:
        raise DataError(f"{image_name} holds no images")
    return images, labels


MIN_CLASS_BOUND = 1000
"""Data without class names may number its classes up to this many whatever its size (a subset of a
1,000-class dataset); beyond it, at most as many classes as it has images."""


def unnamed_classes(splits: dict[str, tuple[np.ndarray, np.ndarray]], label_names: dict[str, str]) -> list[str]:
    """Class names ``0`` .. ``<largest label>`` for data that names none.  The largest label sets the class
    count (names, network outputs, per-class counts), so one stray label of 10^12 would ask for that many
    classes: more classes than :data:`MIN_CLASS_BOUND` and than the data has images is refused, naming the
    label and where it is (``label_names``: split -> the array's or file's name)."""
    images = sum(len(y) for _, y in splits.values())
    top = max(int(y.max()) for _, y in splits.values())
    if top >= max(MIN_CLASS_BOUND, images):
        split = next(s for s, (_, y) in splits.items() if int(y.max()) == top)
        at = int(np.argmax(splits[split][1]))
        raise DataError(f"{label_names[split]} holds label {top:,d} (image {at:,d}): that would make {top + 1:,d} "
                        f"classes, more than its {images:,d} images and more than {MIN_CLASS_BOUND:,d}; labels are "
                        f"class numbers 0, 1, ...: fix that label")
    return [str(i) for i in range(top + 1)]


def check_label_range(splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, where: str) -> None:
    for split, (_, labels) in splits.items():
        if labels.size and labels.max() >= num_classes:
            raise DataError(f"{where}: {split} labels go up to {labels.max()}, beyond the {num_classes} classes "
                            f"0..{num_classes - 1}; fix the labels or the class names")


def as_images(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> (N, channels, size, size), through the image conversion where anything changes."""
    own_channels = 1 if images.ndim == 3 else images.shape[3]
    if images.ndim == 4 and own_channels == 1:
        images = images[..., 0]
        own_channels = 1
    if own_channels == channels and images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2))
    out = np.empty((images.shape[0], channels, size, size), dtype=np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[own_channels]
    for i, image in enumerate(images):
        out[i] = convert(Image.fromarray(np.ascontiguousarray(image), mode=mode), channels, size)
    return out
