"""The IDX format of MNIST-like datasets: read and write, gzip-compressed or not.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
sizes, then the payload: the array in C order, big-endian.  Reading decompresses straight into
the final numpy array (one allocation of the payload's size; no intermediate ``bytes`` of the
whole file) and checks every part of the header and the exact payload length, so a truncated,
padded or foreign file is reported as such instead of turning into a wrongly shaped array.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from cnnlab import fileio
from cnnlab.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20
MAX_DEFLATE_RATIO = 1032
"""Deflate expands a byte to at most 1032 (258-byte matches coded in 2 bits): a gzip file of n bytes
holds at most about 1032 n bytes, so a header declaring more is corrupt and is refused before allocating."""

# IDX type code -> big-endian numpy dtype, as in LeCun's description of the format.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (its name is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def iter_payload(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the (decompressed) content of ``path`` in chunks of at most ``chunk_bytes``.

    gzip is recognised by its magic bytes.  A file named ``*.gz`` that is not gzip, a damaged
    or truncated gzip stream, and bytes after the last gzip member raise :class:`DataError`.
    Concatenated gzip members are decoded one after another, as ``gunzip`` does.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        head = f.read(2)
        if head != GZIP_MAGIC:
            if path.suffix == ".gz":
                raise DataError(f"{path} is not a gzip file (it starts with {head.hex() or 'nothing'}, "
                                f"gzip starts with 1f8b); re-download it or drop the .gz suffix if it is plain IDX")
            f.seek(0)
            while block := f.read(chunk_bytes):
                yield block
            return
        f.seek(0)
        yield from _gunzip(f, path, chunk_bytes)


def _gunzip(f, path: Path, chunk_bytes: int) -> Iterator[bytes]:
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    pending = b""
    while True:
        if not pending:
            pending = f.read(chunk_bytes)
            if not pending:
                break
        try:
            out = decoder.decompress(pending, chunk_bytes)
        except zlib.error as exc:
            raise DataError(f"{path} has corrupt gzip data ({exc}); delete it and download it again") from exc
        pending = decoder.unconsumed_tail
        if out:
            yield out
        if decoder.eof:
            rest = decoder.unused_data + pending + f.read()
            if not rest:
                return
            if not rest.startswith(GZIP_MAGIC):
                raise DataError(f"{path} has {len(rest)} unexpected bytes after the gzip stream; "
                                f"delete it and download it again")
            # Another gzip member follows: decode it with a fresh decoder.
            decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = rest
    # Input exhausted: flush whatever the decoder still holds, then insist the stream ended.
    try:
        tail = decoder.flush()
    except zlib.error as exc:
        raise DataError(f"{path} has corrupt gzip data ({exc}); delete it and download it again") from exc
    if tail:
        yield tail
    if not decoder.eof:
        raise DataError(f"{path} is truncated (the gzip stream ends early); delete it and download it again")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or not) into a writable, native-endian numpy array.

    Raises :class:`DataError` naming the file for a wrong magic number, an unknown type code,
    a truncated or padded payload, or a broken gzip stream.
    """
    path = Path(path)
    chunks = iter_payload(path)
    buffer = bytearray()
    for chunk in chunks:  # gather just the header first; it is at most 4 + 4 * 255 bytes
        buffer += chunk
        if len(buffer) >= 4 and len(buffer) >= 4 + 4 * buffer[3]:
            break
    if len(buffer) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(buffer)} bytes); "
                        f"delete it and download it again")
    if buffer[0] != 0 or buffer[1] != 0:
        raise DataError(f"{path} is not an IDX file (magic 0x{bytes(buffer[:4]).hex()}, expected "
                        f"0x0000 followed by type and rank); check that it is an MNIST-style file")
    type_code, ndim = buffer[2], buffer[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise DataError(f"{path} has unknown IDX type code 0x{type_code:02x} (known: {known}); "
                        f"check that it is an MNIST-style file")
    if ndim == 0:
        raise DataError(f"{path} declares 0 dimensions; an IDX file needs at least one")
    header_bytes = 4 + 4 * ndim
    if len(buffer) < header_bytes:
        raise DataError(f"{path} is truncated inside its header ({len(buffer)} of {header_bytes} bytes); "
                        f"delete it and download it again")
    shape = tuple(int(s) for s in np.frombuffer(bytes(buffer[4:header_bytes]), dtype=">u4"))
    dtype = IDX_DTYPES[type_code]
    _check_declared_size(path, shape, dtype, header_bytes)
    try:
        array = np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError) as exc:
        raise DataError(f"{path} declares shape {shape} ({dtype.name}), more than this machine can hold "
                        f"({type(exc).__name__}); check that it is the right file") from exc
    target = memoryview(array.reshape(-1).view(np.uint8))
    expected = target.nbytes
    filled = 0

    def place(data) -> None:
        nonlocal filled
        if filled + len(data) > expected:
            extra = filled + len(data) - expected
            extra += sum(len(c) for c in chunks)
            raise _padded(path, extra, shape, dtype)
        target[filled:filled + len(data)] = data
        filled += len(data)

    place(memoryview(buffer)[header_bytes:])
    del buffer
    for chunk in chunks:
        place(chunk)
    if filled != expected:
        raise _truncated(path, filled, expected, shape, dtype)
    if not dtype.isnative:  # swap in place: no second copy of the payload
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def _check_declared_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, header_bytes: int) -> None:
    """Refuse a header whose payload cannot be in the file, before allocating the array.

    A plain file must hold exactly the declared payload (the same messages as when reading finds
    it short or long); a gzip file cannot hold more than :data:`MAX_DEFLATE_RATIO` times its size.
    """
    expected = math.prod(shape) * dtype.itemsize
    file_size = path.stat().st_size
    if is_gzip(path):
        if expected > MAX_DEFLATE_RATIO * file_size:
            raise DataError(f"{path} declares shape {shape} ({expected:,d} bytes of {dtype.name}), more than its "
                            f"{file_size:,d} compressed bytes can hold; the header is corrupt: delete it and "
                            f"download it again")
        return
    payload = file_size - header_bytes
    if payload < expected:
        raise _truncated(path, payload, expected, shape, dtype)
    if payload > expected:
        raise _padded(path, payload - expected, shape, dtype)


def _truncated(path: Path, got: int, expected: int, shape: tuple[int, ...], dtype: np.dtype) -> DataError:
    return DataError(f"{path} is truncated: payload has {got} of {expected} bytes for shape {shape} "
                     f"({dtype.name}); delete it and download it again")


def _padded(path: Path, extra: int, shape: tuple[int, ...], dtype: np.dtype) -> DataError:
    return DataError(f"{path} has {extra} bytes after the payload its header declares "
                     f"(shape {shape}, {dtype.name}); the file is padded or not an IDX file")


def idx_header(array: np.ndarray) -> bytes:
    """The IDX header (magic number and sizes) that describes ``array``."""
    native = array.dtype.newbyteorder("=")
    if native not in _TYPE_CODES:
        kinds = ", ".join(sorted(d.name for d in _TYPE_CODES))
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of {kinds}")
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"IDX stores arrays of 1 to 255 dimensions, not {array.ndim}")
    if any(s >= 2**32 for s in array.shape):
        raise DataError(f"IDX sizes are 32-bit; shape {array.shape} is too large")
    magic = bytes([0, 0, _TYPE_CODES[native], array.ndim])
    return magic + np.asarray(array.shape, dtype=">u4").tobytes()


def write_idx(path: str | os.PathLike, array, compress: bool | None = None) -> None:
    """Write ``array`` (numpy or CPU tensor) as an IDX file, atomically.

    ``compress=None`` gzips when the name ends in ``.gz``.  The gzip header carries no file
    name and a zero time stamp, so the same array always gives the same bytes.
    """
    path = Path(path)
    array = np.asarray(array)
    header = idx_header(array)
    payload = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">"))
    if compress is None:
        compress = path.suffix == ".gz"
    with fileio.atomic_open(path, "wb") as f:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(header)
                gz.write(memoryview(payload.reshape(-1).view(np.uint8)))
        else:
            f.write(header)
            f.write(memoryview(payload.reshape(-1).view(np.uint8)))
