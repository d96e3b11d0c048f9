"""One writer per run directory: an exclusive lock held while a command writes into it.

``hold(run_dir)`` opens ``run_dir/.cnnlab-lock`` and takes an exclusive lock on it
(:class:`cnnlab.portable.LockedFile`) for as long as the ``with`` block runs; the file records who
holds it (pid, host, command, start time), so a second writer is refused in one line naming that
process.  The system drops the lock when
its process dies, however it dies (SIGKILL, a crash, a power cut): a lock file left behind by a
killed process is noticed (it still names its holder) and taken over, with a note saying so.

A distributed run is one writer: ``cnnlab train --nproc N`` holds the lock in the launcher and
tells its workers through :data:`HELD_ENV`; under a plain ``torchrun`` rank 0 takes it.

On release the lock file is removed, and so are the run directory and the folders above it that
taking the lock created, if nothing was written into them since: a command that fails before its
first write leaves no empty run directory (nor an empty ``runs/``) behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from cnnlab import fileio, portable
from cnnlab.errors import CnnlabError

LOCK_NAME = ".cnnlab-lock"
HELD_ENV = "CNNLAB_RUN_LOCK"
"""Set by a process that holds a run's lock for its child processes: ``<pid>:<lock file>``."""


class RunInUseError(CnnlabError):
    """Another process is writing into the run directory."""


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_NAME


def describe_holder(info: dict | None) -> str:
    """``pid 123 on host (cnnlab train ...) since 2026-12-01 20:30:00`` from a lock file's record."""
    if not info:
        return "another process (it is just starting)"
    text = f"pid {info.get('pid', '?')}"
    if info.get("host") and info.get("host") != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("command"):
        text += f" ({info['command']})"
    if info.get("since"):
        text += f" since {info['since']}"
    return text


def _read_record(fd: int) -> dict | None:
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        record = json.loads(data.decode("utf-8")) if data.strip() else None
        return record if isinstance(record, dict) else None
    return None


def _record() -> dict:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if program.name == "cnnlab" or (program.name == "__main__.py" and program.parent.name == "cnnlab"):
        program = Path("cnnlab")
    elif program.name in ("-c", "-m", "-"):
        program = Path(f"{Path(sys.executable).name} {program.name}")
    command = " ".join([program.name, *sys.argv[1:]])
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def held_by_parent(run_dir: str | os.PathLike) -> bool:
    """Whether this process's parent holds ``run_dir``'s lock for it (the ``--nproc`` launcher's workers)."""
    pid, _, held = os.environ.get(HELD_ENV, "").partition(":")
    return pid.isdigit() and int(pid) == os.getppid() and held == str(lock_path(run_dir).resolve())


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, *, fix: str = "wait for it to finish, or choose another --run-dir",
         share_with_children: bool = False) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block; :class:`RunInUseError` (one line naming the
    holder and ``fix``) if another process holds it.  ``share_with_children``: child processes started
    meanwhile (a launcher's workers) count as this holder."""
    run_dir = Path(run_dir)
    path = lock_path(run_dir)
    if held_by_parent(run_dir):
        yield path
        return
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]   # innermost first
    try:
        fileio.ensure_dir(run_dir)
    except CnnlabError as exc:
        raise CnnlabError(f"run directory {run_dir} is not writable: {exc}") from exc
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)  # the umask applies
        except OSError as exc:
            raise CnnlabError(f"cannot lock {run_dir} ({path}: {exc.strerror or exc}); "
                              f"choose a writable folder or fix its permissions") from exc
        lock = portable.LockedFile(fd)
        if not lock.try_lock():
            holder = _read_record(fd)
            os.close(fd)
            raise RunInUseError(f"run directory {run_dir} is in use by {describe_holder(holder)}; {fix}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the one now there
    try:
        stale = _read_record(fd)
        if stale is not None:
            print(f"note: {run_dir} was locked by {describe_holder(stale)}, which is no longer running; "
                  f"taking the lock over", file=sys.stderr, flush=True)
        portable.rewrite(fd, (json.dumps(_record()) + "\n").encode("utf-8"))
    except BaseException:
        os.close(fd)
        raise
    previous_env = os.environ.get(HELD_ENV)
    if share_with_children:
        os.environ[HELD_ENV] = f"{os.getpid()}:{path.resolve()}"
    try:
        yield path
    finally:
        if share_with_children:
            if previous_env is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous_env
        _release(fd, lock, path)
        for folder in created:   # only while empty: nothing was written into it (``runs/`` too, if it made it)
            try:
                folder.rmdir()
            except OSError:
                break


def _release(fd: int, lock: "portable.LockedFile", path: Path) -> None:
    """Let go of the lock: an empty record first (a lock file left behind then names no holder), the
    file removed while still locked where the system allows it (a process waiting on it finds it gone
    and retries), else (Windows: an open file cannot be removed) once closed, which Windows refuses
    while the next holder has it open."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    removed = portable.remove_open_file(path)
    lock.unlock()
    os.close(fd)
    if not removed:
        with contextlib.suppress(OSError):
            os.unlink(path)


def hold_if_inside(path: str | os.PathLike, run_dir: str | os.PathLike, *, fix: str):
    """``hold(run_dir)`` when ``path`` (a file or folder a command writes) is ``run_dir`` or inside it,
    so nothing lands in a run another process is writing; elsewhere there is nothing to hold."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    if run_dir not in (path, *path.parents):
        return contextlib.nullcontext(None)
    return hold(run_dir, fix=fix)
