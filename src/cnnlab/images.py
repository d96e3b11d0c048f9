"""Reading people's image files: one conversion to 8 bits for every mode Pillow opens.

Every place that reads an image file (``cnnlab predict``, image-folder datasets, uploads to
``cnnlab explain``) goes through :func:`open_image` and :func:`to_8bit`, so a picture gives the
same pixels wherever it is read.  Pillow's own ``convert("L")`` clips deep images instead of
scaling them (a 16-bit PNG becomes almost all white, a float image almost all black); here every
bit depth is scaled to 0..255:

============================  ==========================================================
mode                          8-bit value
============================  ==========================================================
``1``                         0 or 255
``L``, ``P``, ``RGB``, ...    as stored (``P`` through its palette)
``I;16`` (and ``B``/``L``)    ``round(v / 257)``: 0 -> 0, 257 -> 1, 65535 -> 255
``I`` (32-bit integers)       as ``I;16`` when every value is in 0..65535 (how 16-bit files
                              open), else scaled linearly from the image's min..max
``F`` (32-bit floats)         ``round(255 v)`` when every value is in [0, 1], else scaled
                              linearly from the image's min..max
``CMYK``, ``YCbCr``, ``LAB``  converted to RGB by Pillow
============================  ==========================================================

Transparency (``RGBA``, ``LA``, ``PA``, a palette or ``L``/``RGB`` image with a transparent
colour) is composited onto white, as a browser shows it.  Colour becomes gray with Pillow's
ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``); gray becomes colour by repeating it.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import DataError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
"""The formats cnnlab reads (Pillow's names), told by the file's content, never by its name or label:
Pillow's other formats are not opened at all (EPS, for one, would run Ghostscript)."""

FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF or WebP"

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""Modes without colour.  A palette image is gray when its palette is (see :func:`is_colour`)."""


def open_image(source: str | Path | bytes, *, name: str | None = None, max_pixels: int | None = None):
    """The first frame of an image file (a path, or the file's bytes) as a loaded ``PIL.Image``,
    turned upright by its EXIF orientation.

    :class:`DataError`, one line naming the file, for a missing, unreadable, corrupt or
    truncated file and for one with more than ``max_pixels`` pixels (default Pillow's
    decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``), checked from the header before the
    pixels are decoded.
    """
    label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "the uploaded image")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: refuse both, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=FORMATS) as img:
                pixels = img.width * img.height
                if limit is not None and pixels > limit:
                    raise DataError(f"image {label} is too large to read safely ({pixels:,d} pixels, more than "
                                    f"{limit:,d}); shrink it first")
                img.seek(0)
                img.load()
                if img.mode == "F" and not np.isfinite(np.asarray(img)).all():   # a float TIFF's NaN has no gray
                    raise DataError(f"image {label} holds NaN or infinite pixel values; save it with finite values")
                return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise DataError(f"image {label} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"image {label} is a folder, not an image file") from None
    except PermissionError as exc:
        raise DataError(f"cannot read image {label}: {exc.strerror}; check its permissions") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,d} pixels" if found else "too many pixels"
        raise DataError(f"image {label} is too large to read safely ({pixels}, more than "
                        f"{Image.MAX_IMAGE_PIXELS:,d}); shrink it first") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        detail = (f"its content is not {FORMAT_NAMES}" if isinstance(exc, UnidentifiedImageError)   # Pillow's
                  else str(exc).replace(repr(fp), label)[:80] or "unreadable")    # text names the BytesIO
        raise DataError(f"{label} is not an image Pillow can read ({type(exc).__name__}: {detail}); "
                        f"give a {FORMAT_NAMES} file") from exc


def is_colour(img) -> bool:
    """Whether the image has colour: an RGB-like mode, or a palette that is not all gray."""
    if img.mode in GRAY_MODES:
        return False
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3], dtype=np.int16).reshape(-1, 3)
        used = np.unique(np.asarray(img.getchannel(0) if img.mode == "PA" else img))
        rgb = rgb[used[used < len(rgb)]]
        return bool((rgb != rgb[:, :1]).any())
    return True


def _scaled(values: np.ndarray, *, unit_floats: bool) -> np.ndarray:
    """Deep gray values to uint8 by the rules in the module's table.

    Computed in place on one working copy (a 16-bit picture of 16 million pixels, an upload's most, is
    converted in about 100 MB, not 550): 16-bit values in whole numbers, as ``(2 v + 257) // 514``, which
    is ``round(v / 257)`` exactly (``v / 257`` is never halfway between two whole numbers)."""
    lo, hi = (values.min().item(), values.max().item()) if values.size else (0, 0)
    if not unit_floats and lo >= 0 and hi <= 65535:
        out = values.astype(np.uint32)
        out *= 2
        out += 257
        out //= 514
        return out.astype(np.uint8)
    out = values.astype(np.float64)
    if unit_floats and lo >= 0.0 and hi <= 1.0:
        out *= 255.0
    elif hi > lo:
        out -= lo
        out *= 255.0 / (float(hi) - float(lo))
    else:
        out[...] = 0.0
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _flatten(img):
    """An RGBA / LA image composited onto white, as RGB / L."""
    if img.mode == "LA":
        background = Image.new("L", img.size, 255)
        background.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return background
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(img.convert("RGB"), mask=img.getchannel("A"))
    return background


def to_8bit(img, channels: int | None = None):
    """``img`` as an 8-bit ``PIL.Image``: mode ``L`` for ``channels=1``, ``RGB`` for ``channels=3``,
    and for ``None`` whichever the image is (:func:`is_colour`).  See the module's table."""
    if channels not in (None, 1, 3):
        raise DataError(f"images have 1 (gray) or 3 (colour) channels, not {channels!r}")
    colour = is_colour(img)
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16") or img.mode == "I":
        img = Image.fromarray(_scaled(np.asarray(img), unit_floats=False), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(_scaled(np.asarray(img), unit_floats=True), mode="L")
    elif img.mode == "La":
        img = img.convert("LA")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("LA" if img.mode == "L" else "RGBA")
    elif img.mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        img = _flatten(img)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")      # CMYK, YCbCr, LAB, HSV, RGBX
    want = channels if channels is not None else (3 if colour else 1)
    if want == 1 and img.mode != "L":
        img = img.convert("L")
    elif want == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    return img


def read_image(source: str | Path | bytes, channels: int | None = None, *, name: str | None = None,
               max_pixels: int | None = None):
    """:func:`open_image` then :func:`to_8bit`: an 8-bit ``L`` or ``RGB`` ``PIL.Image``."""
    return to_8bit(open_image(source, name=name, max_pixels=max_pixels), channels)
