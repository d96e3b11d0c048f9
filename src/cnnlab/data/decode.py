"""Decoding image files into uint8 arrays: what the processes (or threads) that read an image folder run.

This module imports numpy, Pillow, pyspng and the standard library, never torch: a decoding process
started by spawn (macOS, Windows) imports it afresh, and torch alone took about 6 s per process there.
``tests/test_own_data.py`` checks that it stays so.

Most image folders of small datasets are PNG files already at the chosen size and mode (8-bit gray
or RGB).  Those need no conversion, only their pixels, and :func:`plain_png` reads them with libspng
(``pyspng``) in a third of Pillow's time per file (``benchmarks/folder.py``); it takes a file only
when its header and chunks show that Pillow would give the very same array (every chunk's CRC
correct, no transparency, no EXIF orientation, nothing it does not know), and leaves every other
file, and any file it cannot read, to Pillow.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import Counter

import numpy as np
from PIL import Image

from cnnlab.errors import DataError
from cnnlab.images import is_colour, open_image, to_8bit
from cnnlab.portable import available_memory
from cnnlab.train.config import MAX_IMAGE_SIDE

try:
    import pyspng
except ImportError:   # a platform without its wheel: Pillow reads every file
    pyspng = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLAIN_PNG_MODES = {0: ("L", 1), 2: ("RGB", 3)}
"""PNG colour type -> (Pillow mode, channels) of the files :func:`plain_png` reads."""
PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
                              b"tEXt", b"zTXt", b"iTXt", b"tIME", b"bKGD"})
"""Chunks that do not change the pixels Pillow returns (it applies no gamma or colour profile); a file
with any other (tRNS transparency, eXIf orientation, a palette, unknown ones) goes to Pillow."""
READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
"""How :func:`plain_png` opens a file: in binary mode, which Windows needs asked for (``O_BINARY``; it
opens in text mode otherwise), and which is all there is elsewhere."""
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
ORIENTING_TEXT = (b"XML:com.adobe.xmp", b"Raw profile type")
"""Text chunk keywords Pillow reads an orientation from (XMP's tiff:Orientation, ImageMagick's raw EXIF
profile): such a file goes to Pillow, which turns the picture upright."""


def convert(img, channels: int, size: int) -> np.ndarray:
    """A PIL image as uint8 (C, size, size): :func:`cnnlab.images.to_8bit`, then Pillow's resize."""
    img = to_8bit(img, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def plain_png(path: str, channels: int, size: int) -> tuple[np.ndarray, tuple] | None:
    """``(uint8 (channels, size, size), (size, mode, colour))`` of an 8-bit gray (``channels`` 1) or RGB
    (3) PNG file of exactly ``size`` x ``size`` pixels, not interlaced, whose chunks are all intact and
    in :data:`PLAIN_PNG_CHUNKS`: the array Pillow's path gives, read by libspng.  None for any other
    file (and without ``pyspng``): Pillow reads it, converts it and reports any damage."""
    if pyspng is None:
        return None
    try:   # os.read: half the time of a file object's for a file of a few hundred bytes
        fd = os.open(path, READ_FLAGS)
        try:
            data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        finally:
            os.close(fd)
    except OSError:
        return None
    if len(data) < 45 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    mode, own_channels = PLAIN_PNG_MODES.get(colour_type, (None, 0))
    if (width, height) != (size, size) or depth != 8 or interlace or own_channels != channels:
        return None
    view, pos, end = memoryview(data), 8, False
    while not end:
        if pos + 12 > len(data):
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 8 + length
        if kind not in PLAIN_PNG_CHUNKS or stop + 4 > len(data) \
                or zlib.crc32(view[pos + 4:stop]) != struct.unpack_from(">I", data, stop)[0]:
            return None
        if kind in TEXT_CHUNKS and data.startswith(ORIENTING_TEXT, pos + 8):
            return None
        end, pos = kind == b"IEND", stop + 4
    try:
        pixels = pyspng.load(data)
    except Exception:   # libspng's own error types; Pillow then says what is wrong with the file
        return None
    if pixels.dtype != np.uint8 or pixels.shape != ((size, size) if channels == 1 else (size, size, 3)):
        return None
    array = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return array, ((size, size), mode, channels == 3)


OUTPUT: np.ndarray | None = None
"""The array being decoded into, while a folder is decoded by processes that share this process's
memory (started as copies of it, or threads): they write their images straight into it (sending them
back cost the parent more CPU than the decoding saved).  A spawned process sees None and returns its images."""


def decode_chunk(task):
    """Decode ``paths`` into rows ``start:`` of :data:`OUTPUT` (or into an array it returns); returns
    ``(start, that array or None, Counter of (size, mode, colour) as found, [(index, message)] of the
    files that failed)``.  A failure ends the chunk unless ``skip_bad``."""
    start, paths, channels, size, skip_bad = task
    shared = OUTPUT is not None
    out = OUTPUT[start:start + len(paths)] if shared else np.zeros((len(paths), channels, size, size), np.uint8)
    found, bad = Counter(), []
    for i, path in enumerate(paths):
        plain = plain_png(path, channels, size)
        if plain is not None:
            out[i], row = plain
            found[row] += 1
            continue
        try:
            img = open_image(path)
            found[(img.size, img.mode, is_colour(img))] += 1
            out[i] = convert(img, channels, size)
        except DataError as exc:
            bad.append((i, str(exc)))
            if not skip_bad:
                break
    return start, None if shared else out, found, bad


def check_conversion(n: int, channels: int, size: int, where: str, available: int | None = None) -> None:
    """Refuse, before converting, images of any source at a size no run takes (a side beyond
    :data:`~cnnlab.train.config.MAX_IMAGE_SIDE`: the run would train, then every later command would refuse
    its checkpoint) or whose uint8 array would not fit in half the free memory.  The size may come from
    ``--image-size`` or from the data itself; both pass here."""
    if size > MAX_IMAGE_SIDE:
        raise DataError(f"{where}: its images are {size:,d} pixels on a side, more than the {MAX_IMAGE_SIDE:,d} a run "
                        f"takes; choose --image-size {MAX_IMAGE_SIDE} or less")
    need = n * channels * size * size
    available = exceeded_memory(need, available)
    if available is not None:
        raise DataError(f"{where}: {n:,d} images at {channels}x{size}x{size} need {need / 2**30:.1f} GiB, more than "
                        f"half the {available / 2**30:.1f} GiB of free memory; choose a smaller --image-size "
                        f"or --channels 1, or use a part of the data")


def exceeded_memory(need: int, available: int | None = None) -> int | None:
    """The free memory (``available``, else measured now) where ``need`` bytes would take more than half of
    it, else None: the rule every array cnnlab reads or converts must meet before it is made."""
    available = available_memory() if available is None else available
    return available if available is not None and need > available // 2 else None
