"""Atomic file writes: a temporary file in the same folder, flushed, then renamed into place.

A reader never sees a half-written file, and an interrupted write (Ctrl-C, a full disk) leaves
the previous version intact.

Renaming is for regular files: an output path that is a new name or a regular file (or a link to
one: the file it names is replaced, the link stays) is written that way.  A FIFO, the null device
or this process's own terminal, which a user names to stream or discard the output, is written
to in place; renaming over it would put a regular file where the device was.  Any other kind of
file (a device, a socket, a folder) is refused in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
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


class OutputExistsError(CnnlabError):
    """A file written with ``replace=False`` found its name taken (another process wrote it first)."""


def _replaced_file(path: Path) -> Path | None:
    """The regular file an atomic write of ``path`` replaces or creates: ``path``, or the file a link at
    ``path`` names; None where ``path`` is written in place (a FIFO, the null device, this process's
    terminal).  One-line :class:`CnnlabError` for a folder or any other kind of file."""
    try:
        found = os.stat(path)
    except OSError:        # a new name (or a link to one); a path that cannot be looked up fails when written
        return Path(os.path.realpath(path)) if os.path.islink(path) else path
    if stat.S_ISREG(found.st_mode):
        return Path(os.path.realpath(path)) if os.path.islink(path) else path
    if stat.S_ISDIR(found.st_mode):
        raise CnnlabError(f"cannot write {path}: it is a folder; give a file name instead")
    if stat.S_ISFIFO(found.st_mode) or (stat.S_ISCHR(found.st_mode) and _null_or_own_terminal(found)):
        return None
    kind = "a socket" if stat.S_ISSOCK(found.st_mode) else "a device"
    raise CnnlabError(f"cannot write {path}: it is {kind}, not a regular file; give a file name instead")


def _null_or_own_terminal(found: os.stat_result) -> bool:
    """Whether the character device ``found`` is the null device or the terminal this process reads or
    writes: the devices a user names on purpose (to discard the output, to see it)."""
    with contextlib.suppress(OSError):
        if os.path.samestat(found, os.stat(os.devnull)):
            return True
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd) and os.path.samestat(found, os.fstat(fd)):
                return True
    return False


def check_output_file(path: str | os.PathLike) -> None:
    """Fail before a command's work, in one line naming it, where ``path`` cannot take its output: a
    folder or a device, or a regular file in a folder that cannot be made or written."""
    target = _replaced_file(Path(path))
    if target is not None:
        check_writable_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, replace: bool = True) -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically (a FIFO, the
    null device or this process's terminal is written in place instead).  With ``replace=False`` it
    only takes a free name: :class:`OutputExistsError` if a file is there by then.

    Every failure to write (a read-only or full disk, a missing permission, a file where a folder
    should be, a device) is a one-line :class:`CnnlabError` naming the path.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    target = _replaced_file(path)
    if target is None:
        with _in_place(path, mode) as f:
            yield f
        return
    ensure_dir(target.parent)
    try:
        fd, tmp = portable.new_file(target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cannot_write_into(target.parent, exc) from exc
    try:
        with _opened(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            portable.replace(tmp, target)
        else:
            portable.place_new(tmp, target)
    except FileExistsError as exc:
        _remove_quietly(tmp)
        raise OutputExistsError(f"{path} already exists (written meanwhile by another program); "
                                f"it was left as it is") from exc
    except OSError as exc:
        _remove_quietly(tmp)
        raise CnnlabError(f"could not write {path}: {exc.strerror or exc}; "
                          f"check free space and permissions") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def _in_place(path: Path, mode: str) -> Iterator[io.IOBase]:
    """``path`` (a FIFO or a character device) opened for writing as it is: never created or truncated."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        with _opened(fd, mode) as f:
            yield f
    except OSError as exc:
        raise CnnlabError(f"could not write {path}: {exc.strerror or exc}; "
                          f"check that it is still there and that something reads it") from exc


def _opened(fd: int, mode: str) -> io.IOBase:
    return os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {}))


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    with atomic_open(path, "wb", replace=replace) as f:
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
