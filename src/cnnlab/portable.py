"""What differs between operating systems, in one place: cnnlab runs on Linux, macOS and Windows.

Nothing else in the package calls an API that one of them lacks (``fcntl``, ``os.O_DIRECTORY``,
``dir_fd``, ``os.fchmod``, ``os.sysconf``, fork, ``/proc``, ...); ``tests/test_portable.py`` checks
that.  Each primitive here takes the fast or native route where the platform has it and a portable
route beside it, chosen by what the running system offers.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import ctypes
import errno
import io
import mmap
import multiprocessing
import os
import platform
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cnnlab.errors import CnnlabError

SYSTEM = platform.system()
"""``Linux``, ``Darwin`` (macOS) or ``Windows``: the one place cnnlab asks which system it runs on."""
WINDOWS = SYSTEM == "Windows"
MACOS = SYSTEM == "Darwin"
LINUX = SYSTEM == "Linux"


def user_cache_dir() -> Path:
    """cnnlab's user cache: ``$XDG_CACHE_HOME/cnnlab`` where that is set, else the system's own place:
    ``~/.cache/cnnlab`` (Linux), ``~/Library/Caches/cnnlab`` (macOS), ``%LOCALAPPDATA%\\cnnlab\\Cache``
    (Windows)."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cnnlab"
    home = Path(os.path.expanduser("~"))
    if MACOS:
        return home / "Library" / "Caches" / "cnnlab"
    if WINDOWS:
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "cnnlab" / "Cache"
    return home / ".cache" / "cnnlab"


# --- Files ---

REPLACE_PATIENCE_S = 2.0
"""How long replacing a file waits for another program to let go of it (Windows refuses to replace or
remove a file that is open: a spreadsheet showing metrics.csv, a virus scanner reading a new file)."""


class FileInUseError(CnnlabError):
    """Another program holds a file open, so it cannot be replaced (Windows)."""


def new_file(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """A new empty file in ``folder`` with a random name, open for writing, as ``(fd, path)``.

    Made with mode 0666 so the umask applies as for ``open()`` (mkstemp's 0600 would need an fchmod,
    which Windows lacks), in binary mode (Windows' default text mode would turn b"\\n" into b"\\r\\n"),
    not inherited by child processes (Python's default), and never through a link an attacker planted
    (``O_EXCL``).  OSError if it cannot be made."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace(source, target)``, atomic on every system.  Where ``target`` is open in another
    program (Windows refuses then), it tries again for :data:`REPLACE_PATIENCE_S`, then raises
    :class:`FileInUseError` naming it.  Any other OSError propagates."""
    deadline, pause = time.monotonic() + REPLACE_PATIENCE_S, 0.01
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError as exc:
            if not _held_elsewhere(exc, target):
                raise
            if time.monotonic() >= deadline:
                raise FileInUseError(f"cannot replace {target}: another program has it open; close it there "
                                     f"(a spreadsheet, an image viewer, an editor) and run again") from exc
            time.sleep(pause)
            pause = min(2 * pause, 0.2)


def place_new(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move ``source`` to ``target`` unless ``target`` exists (FileExistsError then, and ``source`` stays):
    of two processes placing files at one name at once, exactly one succeeds.  Windows' rename refuses an
    existing target; elsewhere a hard link takes the name (it fails if the name is taken) and ``source``
    is then removed.  A file system without hard links (FAT, some network shares) gets the name taken by
    an exclusively created empty file, replaced at once.  Any other OSError propagates."""
    if WINDOWS:
        os.rename(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(source, target)
        return
    os.unlink(source)


def _held_elsewhere(exc: PermissionError, target: str | os.PathLike) -> bool:
    """Whether a refused replace means that the target is open in another program: Windows' access
    denied (5) or sharing violation (32, 33) on a target that exists and is not read-only."""
    if getattr(exc, "winerror", None) not in (5, 32, 33):
        return False
    try:
        return os.access(target, os.W_OK)
    except OSError:
        return False


def remove_open_file(path: str | os.PathLike) -> bool:
    """Remove ``path``, which this process has open: POSIX allows it (the open file lives on until
    closed), Windows refuses.  True if it is gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except PermissionError:
        return False
    return True


class LockedFile:
    """An exclusive advisory lock on an open file, released when the file is closed (or its process
    ends, however it ends): ``flock`` on Linux and macOS, ``msvcrt.locking`` on Windows.  Windows'
    lock is on one byte far past the end of the file, so other processes can still read what the
    file says (who holds it)."""

    _WINDOWS_LOCK_AT = 1 << 30

    def __init__(self, fd: int):
        self.fd = fd

    def try_lock(self) -> bool:
        """Take the lock if no other process holds it; False if one does."""
        if WINDOWS:
            import msvcrt  # noqa: PLC0415  Windows-only module

            os.lseek(self.fd, self._WINDOWS_LOCK_AT, os.SEEK_SET)
            try:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
            return True
        import fcntl  # noqa: PLC0415  POSIX-only module

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def unlock(self) -> None:
        if WINDOWS:
            import msvcrt  # noqa: PLC0415  Windows-only module

            os.lseek(self.fd, self._WINDOWS_LOCK_AT, os.SEEK_SET)
            with contextlib.suppress(OSError):
                msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
            return
        import fcntl  # noqa: PLC0415  POSIX-only module

        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def rewrite(fd: int, data: bytes) -> None:
    """Replace the whole content of the open file ``fd`` with ``data`` (in place, not atomic)."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Folder:
    """The entries of one folder, listed once: ``key`` tells the folder apart from every other (to find
    link loops), ``names`` are its entries sorted, ``stat(name)`` follows links (OSError for a broken
    one).  Where the system can (Linux, macOS) each name is looked up in the open folder (``dir_fd``):
    for 70,000 files, 0.19 s instead of 0.32 s through whole paths; elsewhere ``os.scandir``'s entries,
    whose stat Windows gives with the listing."""

    FAST = hasattr(os, "O_DIRECTORY") and os.stat in os.supports_dir_fd and os.listdir in os.supports_fd

    def __init__(self, path: str):
        self.path = path
        if self.FAST:
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                st = os.fstat(self._fd)
                self.names = sorted(os.listdir(self._fd))
            except BaseException:
                os.close(self._fd)
                raise
        else:
            self._fd = None
            st = os.stat(path)
            with os.scandir(path) as it:
                self._entries = {entry.name: entry for entry in it}
            self.names = sorted(self._entries)
        self.key = (st.st_dev, st.st_ino)

    def stat(self, name: str) -> os.stat_result:
        if self._fd is not None:
            return os.stat(name, dir_fd=self._fd)
        return self._entries[name].stat()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- Sockets ---

def claim_port(sock: socket.socket) -> None:
    """Before ``bind``: ``sock`` gets its port alone, yet a restarted server can bind it at once.  POSIX's
    SO_REUSEADDR means just that (a port in TIME_WAIT); Windows' SO_REUSEADDR would let a second server
    bind a port in use, so there it is SO_EXCLUSIVEADDRUSE instead."""
    if WINDOWS:
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

# --- Console ---

_NEVER_RAISE = {"replace", "backslashreplace", "xmlcharrefreplace", "namereplace", "ignore"}
"""Error handlers with which writing text never fails (stderr's default is ``backslashreplace``)."""


def make_console_safe() -> None:
    """Let printing any text succeed, whatever the console's or pipe's encoding.

    Redirected to a file or pipe, Python writes in the locale's encoding (cp1252 on an English Windows,
    ascii under ``LANG=C``) and raises ``UnicodeEncodeError`` on the first character it lacks: a Chinese
    class name or folder.  A stream that raises so (``errors="strict"``, or ``"surrogateescape"`` as
    under ``LANG=C``) in an encoding other than UTF is switched to write ``?`` for those characters
    instead; its encoding stays, so a UTF-8 console keeps printing every character and a GBK one its
    Chinese.  A stream that is not a plain text file (a notebook's, pythonw's None, one a caller
    replaced) is left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.errors in _NEVER_RAISE:
            continue
        try:
            if codecs.lookup(stream.encoding).name.startswith("utf"):
                continue
            stream.reconfigure(errors="replace")
        except (LookupError, ValueError):   # an unknown codec name, a closed or detached stream
            continue


def is_closed_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` says the program reading stdout went away (``cnnlab data info | head``).

    On Linux and macOS a write to a closed pipe raises ``BrokenPipeError``; on Windows it raises
    ``OSError`` with errno ``EINVAL``, which also means an invalid argument elsewhere (a file name with
    ``?`` in it), so there it counts only if stdout itself still cannot be written.
    """
    if isinstance(exc, BrokenPipeError):
        return True
    if not (WINDOWS and isinstance(exc, OSError) and exc.errno == errno.EINVAL and exc.filename is None):
        return False
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as again:
        return isinstance(again, BrokenPipeError) or again.errno == errno.EINVAL
    return False


# --- Names ---
# A run folder made on Linux or macOS is copied to a Windows laptop, so every folder cnnlab names follows
# Windows' rules (the strictest) on every system.

_RESERVED = {"CON", "PRN", "AUX", "NUL", *(port + n for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3")}
"""Device names Windows reserves, in any case and with any extension (``con.txt``)."""
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
"""Characters Windows forbids in a file name: ``<>:"/\\|?*`` and the control characters."""


def _reserved(name: str) -> bool:
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


def check_portable_name(name: str) -> str | None:
    """What keeps ``name`` from being a folder's name on every system (Windows' rules), or None if nothing."""
    if name in ("", ".", ".."):
        return f"{name!r} names no folder"
    bad = sorted(set(_FORBIDDEN.findall(name)))
    if bad:
        shown = " ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad)
        return f"Windows forbids {shown} in folder names (any of <>:\"/\\|?* and control characters)"
    if name[-1] in ". ":
        return "Windows drops a trailing dot or space from folder names"
    if _reserved(name):
        return (f"{name.split('.', 1)[0]!r} is a device name Windows reserves (CON, PRN, AUX, NUL, COM0-9, "
                f"LPT0-9, in any case, with or without an extension)")
    return None


def portable_name(name: str) -> str:
    """``name`` made a valid folder name on every system, always the same way: each forbidden character
    becomes ``-``, trailing dots and spaces go, and a reserved device name gains ``_`` (``con.txt`` ->
    ``con_.txt``).  A name that is valid already comes back unchanged."""
    safe = _FORBIDDEN.sub("-", name).rstrip(". ")
    if _reserved(safe):
        stem, dot, rest = safe.partition(".")
        safe = stem.rstrip(" ") + "_" + dot + rest
    return safe or "_"

# --- Processes ---

def worker_start_method() -> str | None:
    """How to start processes that run cnnlab's own functions (an image folder's decoding): ``"fork"`` on
    Linux (nothing is imported again, and the parent's memory is shared); ``"spawn"`` on macOS, where
    Python's documentation calls fork unsafe, and on Windows, which has nothing else.  None where a
    spawned process would re-run a main script without an ``if __name__ == "__main__":`` guard
    (:func:`unguarded_main_script`): it would start the script's work over and fail, so the work stays
    in this process."""
    if LINUX and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None if unguarded_main_script() else "spawn"


def workers_share_memory(method: str | None) -> bool:
    """Whether processes started with ``method`` (:func:`worker_start_method`) see this process's memory
    as it was (forked, on Linux): they start at once and write into a :func:`worker_pool` buffer.
    Spawned ones import afresh and send their results back."""
    return method == "fork"


SharedBuffer = mmap.mmap
"""The buffer :func:`worker_pool` shares with workers that share this process's memory (anonymous shared
memory)."""


def worker_pool(workers: int, method: str, nbytes: int) -> tuple[ProcessPoolExecutor, SharedBuffer | None]:
    """``workers`` processes started with ``method`` (:func:`worker_start_method`), and a zeroed buffer of
    ``nbytes`` that they write into and this process reads: anonymous shared memory, which forked
    processes inherit; None where they are spawned (they send what they made back instead)."""
    buffer = mmap.mmap(-1, max(nbytes, 1)) if workers_share_memory(method) else None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)), buffer


def unguarded_main_script() -> str | None:
    """The path of this process's main script when a spawned process would run it again (as Python's
    ``multiprocessing`` does for a script or a ``python -m`` module other than a package's
    ``__main__``) and nothing in it keeps its work to the main process: no top-level
    ``if __name__ == "__main__":``.  None for ``python -m cnnlab``, an interactive session, a notebook
    or a guarded script."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None                      # a package's __main__: multiprocessing leaves it alone
    path = getattr(main, "__file__", None)
    if path is None:
        return None                      # interactive, python -c, a notebook: nothing to re-run
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return path                      # unknown (a frozen or deleted script): assume the worst
    return None if any(_is_main_guard(node) for node in tree.body) else path


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1 \
            or not isinstance(node.test.ops[0], ast.Eq):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def child_pids() -> list[int]:
    """This process's child processes, read from ``/proc`` (Linux); empty where there is no ``/proc``."""
    me, children = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[1]) == me:
                    children.append(int(entry))
    return children


def can_wake_stopped_children() -> bool:
    """Whether :func:`waking_stopped_children` does anything here: it needs ``os.waitid`` (not on Windows,
    nor on macOS before Python 3.13), SIGCHLD and SIGCONT (not on Windows) and a list of children
    (``/proc``, Linux), and must run on the main thread (signal handlers live there)."""
    return (hasattr(os, "waitid") and hasattr(signal, "SIGCHLD") and hasattr(signal, "SIGCONT")
            and os.path.isdir("/proc/self") and threading.current_thread() is threading.main_thread())


@contextlib.contextmanager
def waking_stopped_children() -> Iterator[None]:
    """While the block runs, whenever a child process exits, continue (SIGCONT) this process's other
    children: a stopped one (SIGSTOP, a debugger) cannot act on the SIGTERM that stops it, and SIGCONT does
    nothing to one that runs.  Where the system lacks what this needs (:func:`can_wake_stopped_children`)
    the block runs without it."""
    if not can_wake_stopped_children():
        yield
        return

    def wake(signum, frame):
        try:   # an exited child, left for its owner to collect (SIGCHLD also comes when one stops)
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            exited = None
        if exited is None:
            return
        for pid in child_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    previous = signal.signal(signal.SIGCHLD, wake)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9 where the system has a name for the number, else ``signal 9`` (Windows names
    only a few signals)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def local_rendezvous() -> Iterator[tuple[list[str], dict[str, str]]]:
    """For the block: ``(torchrun's rendezvous arguments, environment variables it and its workers need)``
    for processes on this machine alone.  ``--standalone`` (a TCP store on a free port) where PyTorch's
    TCP store has libuv, its default; on Windows, whose PyTorch has none and fails when asked for it
    ("use_libuv was requested but PyTorch was built without libuv support"), the rendezvous goes through
    a file in a temporary folder, the workers' own store is made without libuv (``USE_LIBUV=0``, read
    by ``init_process_group``), and torchrun shares no TCP store of its own with them (it would make
    that one with libuv: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``)."""
    if not WINDOWS:
        yield ["--standalone"], {}
        return
    with tempfile.TemporaryDirectory(prefix="cnnlab-rendezvous-", ignore_cleanup_errors=True) as folder:
        yield (["--rdzv-backend=c10d", f"--rdzv-endpoint={os.path.join(folder, 'store')}",
                "--rdzv-conf=store_type=file", f"--rdzv-id={uuid.uuid4()}", "--nnodes=1",
                "--local-addr=127.0.0.1"],
               {"USE_LIBUV": "0", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})

# --- System facts ---
# What the machine offers, asked of each system its own way: the CPU's instruction sets, free memory,
# this process's age, the shared libraries it has loaded.  Each answer is None where the system does
# not say or the question fails, and callers then take their cautious default.


def _read_text(path: str) -> str | None:
    """A system file's text (``/proc/...``), or None where it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _command_output(*command: str) -> str | None:
    """What ``command`` prints, or None if it cannot run, fails or takes more than two seconds."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set extensions, named as Linux names them (x86 ``avx2``, ``avx512_bf16``,
    ``amx_bf16``; Arm ``asimd``, ``bf16``), or None where the system does not say (Windows).

    Linux: the first CPU's ``flags`` (x86) or ``Features`` (Arm) in /proc/cpuinfo.  macOS: ``sysctl``:
    on Apple silicon the ``hw.optional`` entries set to 1 (``hw.optional.arm.FEAT_BF16`` -> ``bf16``,
    which M2 and later have and M1 has not), on an Intel Mac ``machdep.cpu.features`` and
    ``leaf7_features``."""
    if WINDOWS:
        return None
    if MACOS:
        if platform.machine() == "arm64":
            return _apple_silicon_features(_command_output("sysctl", "hw.optional"))
        return _intel_mac_features(_command_output("sysctl", "-n", "machdep.cpu.features",
                                                   "machdep.cpu.leaf7_features"))
    text = _read_text("/proc/cpuinfo")
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _apple_silicon_features(sysctl: str | None) -> set[str] | None:
    """The features ``sysctl hw.optional`` reports present (``hw.optional.arm.FEAT_BF16: 1`` -> ``bf16``)."""
    if sysctl is None:
        return None
    features = set()
    for line in sysctl.splitlines():
        name, _, value = line.partition(":")
        if value.strip() == "1":
            feature = name.strip().rsplit(".", 1)[-1].lower()
            features.add(feature.removeprefix("feat_"))
    return features


_INTEL_MAC_NAMES = {"avx1.0": "avx", "sse4.1": "sse4_1", "sse4.2": "sse4_2",
                    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512vbmi2": "avx512_vbmi2",
                    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq"}
"""macOS's names for x86 extensions whose Linux names differ by more than their case."""


def _intel_mac_features(sysctl: str | None) -> set[str] | None:
    """The features of ``sysctl -n machdep.cpu.features machdep.cpu.leaf7_features``, in Linux's names."""
    if sysctl is None:
        return None
    return {_INTEL_MAC_NAMES.get(name.lower(), name.lower()) for name in sysctl.split()}


def available_memory() -> int | None:
    """Bytes of memory free for new allocations without swapping, or None where unknown.

    Linux: ``MemAvailable`` in /proc/meminfo (else the free pages, ``os.sysconf``); macOS: the free,
    speculative and inactive pages of ``vm_stat`` (as psutil counts them); Windows: ``ullAvailPhys`` of
    GlobalMemoryStatusEx."""
    if WINDOWS:
        return _windows_available_memory()
    if MACOS:
        return _vm_stat_available(_command_output("vm_stat"))
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _vm_stat_available(vm_stat: str | None) -> int | None:
    """Free + speculative + inactive pages of ``vm_stat``'s report, in bytes."""
    if vm_stat is None:
        return None
    lines = vm_stat.splitlines()
    page = re.search(r"page size of (\d+) bytes", lines[0]) if lines else None
    pages = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if value.strip().rstrip(".").isdigit():
            pages[name.strip()] = int(value.strip().rstrip("."))
    kinds = ("Pages free", "Pages speculative", "Pages inactive")
    if page is None or any(kind not in pages for kind in kinds):
        return None
    return sum(pages[kind] for kind in kinds) * int(page.group(1))


class _MemoryStatus(ctypes.Structure):
    """MEMORYSTATUSEX, which GlobalMemoryStatusEx fills in (64 bytes)."""

    _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),
                ("ullTotalPhys", ctypes.c_uint64), ("ullAvailPhys", ctypes.c_uint64),
                ("ullTotalPageFile", ctypes.c_uint64), ("ullAvailPageFile", ctypes.c_uint64),
                ("ullTotalVirtual", ctypes.c_uint64), ("ullAvailVirtual", ctypes.c_uint64),
                ("ullAvailExtendedVirtual", ctypes.c_uint64)]


def _kernel32():
    """Windows' kernel32.dll, an instance of its own (argument types set on it touch no other caller)."""
    return ctypes.WinDLL("kernel32")


def _windows_available_memory() -> int | None:
    status = _MemoryStatus()
    status.dwLength = ctypes.sizeof(_MemoryStatus)
    try:
        if _kernel32().GlobalMemoryStatusEx(ctypes.byref(status)):
            return status.ullAvailPhys
    except (OSError, AttributeError):
        pass
    return None


def busy_cores_elsewhere(sample_s: float = 0.05) -> float | None:
    """How many CPU cores other processes kept busy over the next ``sample_s`` seconds (this process's own
    time taken out), or None where the system does not say.

    The machine's busy and total CPU time are read before and after the sample: Linux, the ``cpu`` line of
    /proc/stat (10 ms ticks); macOS, host_statistics' HOST_CPU_LOAD_INFO ticks; Windows, GetSystemTimes
    (100 ns, kernel time including idle).  This process's own time is ``os.times()``."""
    first, own = _cpu_ticks(), os.times()
    if first is None:
        return None
    time.sleep(sample_s)
    last, own_after = _cpu_ticks(), os.times()
    if last is None or last[1] <= first[1]:
        return None
    cores = os.cpu_count() or 1
    elapsed_per_core = (last[1] - first[1]) / cores          # ticks a core had during the sample
    busy = (last[0] - first[0]) / elapsed_per_core           # cores kept busy by every process
    ours = (own_after.user + own_after.system - own.user - own.system) / max(own_after.elapsed - own.elapsed, 1e-9)
    return max(0.0, min(float(cores), busy - ours))


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in the system's own unit."""
    if WINDOWS:
        idle, kernel, user = (ctypes.c_uint64() for _ in range(3))
        try:
            if not _kernel32().GetSystemTimes(ctypes.byref(idle), ctypes.byref(kernel), ctypes.byref(user)):
                return None
        except (OSError, AttributeError):
            return None
        return kernel.value - idle.value + user.value, kernel.value + user.value
    if MACOS:
        ticks = (ctypes.c_uint32 * 4)()          # user, system, idle, nice
        count = ctypes.c_uint32(4)
        try:
            libc = _libc()
            if libc.host_statistics(libc.mach_host_self(), 3, ticks, ctypes.byref(count)) != 0:  # HOST_CPU_LOAD_INFO
                return None
        except (OSError, AttributeError):
            return None
        return ticks[0] + ticks[1] + ticks[3], sum(ticks)
    fields = (_read_text("/proc/stat") or "").split("\n", 1)[0].split()
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    try:
        user, nice, system, idle, *rest = (int(v) for v in fields[1:9])
    except ValueError:
        return None
    iowait = rest[0] if rest else 0
    busy = user + nice + system + sum(rest[1:])              # irq, softirq, steal
    return busy, busy + idle + iowait


def process_age() -> float | None:
    """Seconds since this process started, or None where unknown.

    Linux: /proc/self/stat against /proc/uptime (10 ms resolution); macOS: the start time the kernel
    keeps for the process (``sysctl`` kern.proc.pid, 1 us); Windows: its creation time (GetProcessTimes,
    100 ns)."""
    if WINDOWS:
        return _windows_process_age()
    if MACOS:
        return _macos_process_age()
    try:
        # Field 22 is the start time in clock ticks after boot; the command name (field 2) may hold
        # spaces, so count from the closing parenthesis.
        start_ticks = int(_read_text("/proc/self/stat").rsplit(")", 1)[1].split()[19])
        uptime = float(_read_text("/proc/uptime").split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (AttributeError, OSError, ValueError, IndexError):
        return None


def _windows_process_age() -> float | None:
    created, exited, kernel, user, now = (ctypes.c_uint64() for _ in range(5))   # FILETIMEs: 100 ns ticks
    try:
        kernel32 = _kernel32()
        if not kernel32.GetProcessTimes(ctypes.c_void_p(-1), ctypes.byref(created), ctypes.byref(exited),
                                        ctypes.byref(kernel), ctypes.byref(user)):   # -1: this process
            return None
        kernel32.GetSystemTimeAsFileTime(ctypes.byref(now))
    except (OSError, AttributeError):
        return None
    return max(0.0, (now.value - created.value) / 1e7)


def _libc():
    """The C library's functions (on macOS, libSystem's), from the running process."""
    return ctypes.CDLL(None)


def _macos_process_age() -> float | None:
    # sysctl {CTL_KERN, KERN_PROC, KERN_PROC_PID, pid} fills a struct kinfo_proc (648 bytes), which
    # begins with the process's start time, a struct timeval (64-bit seconds, 32-bit microseconds).
    mib = (ctypes.c_int * 4)(1, 14, 1, os.getpid())
    info = ctypes.create_string_buffer(1024)
    size = ctypes.c_size_t(ctypes.sizeof(info))
    try:
        if _libc().sysctl(mib, ctypes.c_uint(4), info, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    if size.value < 16:
        return None
    seconds, microseconds = struct.unpack_from("=qi", info.raw)
    return max(0.0, time.time() - (seconds + microseconds / 1e6))


def loaded_libraries() -> list[str] | None:
    """The files of the shared libraries mapped into this process (Linux: /proc/self/maps), or None
    where the system does not say."""
    if WINDOWS or MACOS:
        return None
    text = _read_text("/proc/self/maps")
    if text is None:
        return None
    paths = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths[fields[5]] = None
    return list(paths)


def shared_library_suffix() -> str:
    """How this system's shared libraries are named: ``.dll`` (Windows), ``.dylib`` (macOS), ``.so``."""
    return ".dll" if WINDOWS else ".dylib" if MACOS else ".so"


def compiler_blocked(compiler: str) -> str | None:
    """Why the C compiler at ``compiler`` must not be run unasked, or None.

    On macOS the compilers in /usr/bin are Apple's stubs: without the command line tools (``xcode-select
    -p`` names no folder), running one opens an installer dialog instead of compiling."""
    if not MACOS or not compiler.startswith("/usr/bin/"):
        return None
    folder = (_command_output("xcode-select", "-p") or "").strip()
    if folder and os.path.isdir(folder):
        return None
    return f"{compiler} needs Apple's command line tools, which are not installed (xcode-select --install)"
