"""The converted-image cache: decoded datasets kept as uint8 arrays under the user cache.

A cache file is ``<cache>/images/<key>.npz`` (plain arrays, read with ``allow_pickle=False``).  The key
is a hash of everything the arrays depend on: the source's path, every file's relative path, size and
modification time, and the conversion settings; a file added, removed, replaced or touched gives a new
key, so a stale cache is never read (and the stale entry is removed when the new one is written).  Files are written to a temporary name and renamed (atomic): an
interrupted write leaves no cache rather than a broken one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import fileio
from cnnlab.data.sources import cache_dir
from cnnlab.errors import CnnlabError

FORMAT = 1
"""Bumped when the conversion changes, so caches of an older conversion are not read."""


def _digest(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def fingerprint(files: list) -> str:
    """A hash of a source's files as (path, size, mtime_ns) rows (any JSON value)."""
    return _digest(files, 16)


def cache_key(source: str, files_fingerprint: str, settings: dict[str, Any]) -> str:
    """``<source>-<settings>-<files>`` hashes: one entry per source and settings, replaced when its files
    change (``files_fingerprint``: :func:`fingerprint`, or an image folder's ``Scan.fingerprint``)."""
    return f"{_digest([FORMAT, source], 12)}-{_digest(settings, 8)}-{files_fingerprint}"


def cache_path(key: str) -> Path:
    return cache_dir() / "images" / f"{key}.npz"


def load(key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and the metadata saved under ``key``, or None (missing or unreadable: decode again)."""
    path = cache_path(key)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
            meta = json.loads(str(archive["meta"]))
        return arrays, meta
    except (OSError, ValueError, KeyError, EOFError):
        return None


def save(key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path | None:
    """Write the cache atomically; a cache that cannot be written only costs a decode next time."""
    path = cache_path(key)
    with contextlib.suppress(CnnlabError):
        with fileio.atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        # The same source at the same settings from files since changed: never read again, so removed.
        stale_prefix = key.rsplit("-", 1)[0]
        for stale in path.parent.glob(f"{stale_prefix}-*.npz"):
            if stale != path:
                with contextlib.suppress(OSError):
                    stale.unlink()
        return path
    return None
