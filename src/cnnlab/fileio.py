"""Atomic file writes: a temporary file in the same folder, flushed, then renamed into place.

A reader never sees a half-written file, and an interrupted write (Ctrl-C, a full disk) leaves
the previous version intact.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from cnnlab import portable
from cnnlab.errors import CnnlabError, ConfigError

FIRST_FIGURE_FORMATS = ("png", "pdf", "svg")
"""Listed first when a figure's suffix is not a format matplotlib writes."""


def ensure_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) if needed; one-line :class:`CnnlabError` naming it if that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CnnlabError(f"cannot use {folder} as a folder: {_existing_file(folder)} is a file; "
                          f"choose another output folder or move the file away") from exc
    except OSError as exc:
        raise CnnlabError(f"cannot create folder {folder}: {exc.strerror or exc}; "
                          f"choose a writable output folder or fix its permissions") from exc
    return folder


def probe_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and a file in it, removed at once: OSError unless both work."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, probe = portable.new_file(folder, prefix=".cnnlab-write-test.", suffix="")
    os.close(fd)
    os.unlink(probe)


def check_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be made there, so a command whose output goes
    there fails before its work rather than after it (one-line :class:`CnnlabError` naming it)."""
    folder = ensure_dir(folder)
    try:
        probe_writable(folder)
    except OSError as exc:
        raise _cannot_write_into(folder, exc) from exc
    return folder


def _cannot_write_into(folder: Path, exc: OSError) -> CnnlabError:
    return CnnlabError(f"cannot write into {folder}: {exc.strerror or exc}; "
                       f"choose a writable output folder or fix its permissions")


def _existing_file(folder: Path) -> Path:
    """The part of ``folder``'s path that exists and is not a folder (what blocks creating it)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    Every failure to write (a read-only or full disk, a missing permission, a file where a folder
    should be) is a one-line :class:`CnnlabError` naming the path.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    ensure_dir(path.parent)
    if path.is_dir():
        raise CnnlabError(f"cannot write {path}: it is a folder; give a file name instead")
    try:
        fd, tmp = portable.new_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cannot_write_into(path.parent, exc) from exc
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        portable.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CnnlabError(f"could not write {path}: {exc.strerror or exc}; "
                          f"check free space and permissions") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file, so a checkpoint is either old or new, never torn."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def figure_format(path: str | os.PathLike) -> str:
    """The image format a figure saved as ``path`` gets: its suffix, lower case (``png`` without one)."""
    return Path(path).suffix.lstrip(".").lower() or "png"


def check_figure_path(path: str | os.PathLike, flag: str | None = None) -> None:
    """:class:`ConfigError` listing the formats matplotlib writes, unless ``path``'s suffix is one.

    Commands call this before their work, so a typo in ``--out`` costs nothing.
    """
    from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415  matplotlib (~0.3-0.6 s) only when drawing

    fmt = figure_format(path)
    supported = set(FigureCanvasBase.get_supported_filetypes())
    if fmt not in supported:
        names = [f for f in FIRST_FIGURE_FORMATS if f in supported] + sorted(supported - set(FIRST_FIGURE_FORMATS))
        where = f"{flag} {path}" if flag else str(path)
        raise ConfigError(f"{where}: unknown image format {fmt!r}; end the file name in one of "
                          f"{', '.join('.' + f for f in names)}")


def save_figure(path: str | os.PathLike, fig: Any, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format comes from the file's suffix."""
    check_figure_path(path)
    path = Path(path)
    fmt = figure_format(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **kwargs)
    write_bytes(path, buf.getvalue())
