"""Windows or macOS as cnnlab's code meets them, simulated on Linux for the tests.

Python imports this module at start-up when its folder is on PYTHONPATH (tests/platforms.py puts it
there, and child processes inherit it).  ``CNNLAB_SIMULATE`` says which system:

- ``windows``: inside cnnlab, ``platform.system()`` is ``"Windows"``; ``fcntl``, ``termios`` and
  ``resource`` do not import and a ``msvcrt`` with ``locking`` does; ``os`` lacks what Windows' lacks
  (``O_DIRECTORY``, ``O_CLOEXEC``, ``pwrite``, ``fchmod``, ``sysconf``, ``fork``, ``waitid``, ...),
  ``os.stat(dir_fd=)`` and ``os.listdir(fd)`` are refused, ``signal`` has only Windows' signals,
  ``/proc`` does not exist, and a text file opened without ``encoding=`` is read and written in cp1252.  For every process: ``spawn`` is the only start method, and a file that is
  open (in this process, or listed in ``CNNLAB_SIMULATE_HELD`` as open in another program) cannot be
  replaced, renamed or removed, as Windows refuses; PyTorch's TCP stores have no libuv, as its Windows
  build.
- ``macos``: inside cnnlab, ``platform.system()`` is ``"Darwin"``, ``os`` has no ``waitid`` or
  ``sched_getaffinity`` and ``/proc`` does not exist; ``spawn`` is every process's default start method.

"Inside cnnlab" means code in the ``cnnlab`` package: PyTorch, torchrun and the other libraries keep
Linux's surface, as on a real Windows or Mac they keep their own.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import platform
import signal
import sys
import sysconfig
import types
import weakref

SYSTEM = os.environ.get("CNNLAB_SIMULATE", "")

_STDLIB = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])


def _from_cnnlab(depth: int) -> bool:
    """Whether the call ``depth`` frames up comes from cnnlab, through the standard library at most
    (``Path.read_text`` calling ``open`` for cnnlab counts as cnnlab's)."""
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name == "cnnlab" or name.startswith("cnnlab."):
            return True
        filename = frame.f_code.co_filename
        if not filename.startswith(_STDLIB) or "site-packages" in filename:
            return False
        frame = frame.f_back
    return False


def _no_proc(path) -> None:
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.fsdecode(os.fspath(path))
        if text == "/proc" or text.startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", text)


# --- What cnnlab imports: modules as the simulated system has them -------------------------------

WINDOWS_OS_LACKS = {
    "O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW", "O_NONBLOCK", "O_NOCTTY", "O_SYNC", "O_DSYNC", "O_PATH",
    "pwrite", "pread", "pwritev", "preadv", "fchmod", "fchown", "chown", "lchown", "sysconf",
    "sysconf_names", "confstr", "fork", "forkpty", "register_at_fork", "waitid", "wait", "wait3", "wait4",
    "WNOHANG", "WEXITED", "WNOWAIT", "P_ALL", "P_PID", "sched_getaffinity", "sched_setaffinity",
    "getuid", "geteuid", "getgid", "getegid", "setsid", "getsid", "killpg", "getpgid", "setpgid",
    "mkfifo", "mknod", "getloadavg", "statvfs", "fstatvfs", "uname", "nice", "sync", "posix_fadvise",
    "openpty", "ttyname", "pipe2", "memfd_create", "sendfile", "fdatasync",
}
MACOS_OS_LACKS = {"waitid", "sched_getaffinity", "sched_setaffinity", "pipe2", "memfd_create",
                  "posix_fadvise", "O_PATH", "O_DIRECT", "getrandom", "eventfd"}
WINDOWS_SIGNALS = {"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM", "SIG_DFL", "SIG_IGN",
                   "NSIG", "signal", "getsignal", "default_int_handler", "raise_signal", "set_wakeup_fd",
                   "valid_signals", "strsignal", "Signals", "Handlers"}


def _view(module_name: str, real: types.ModuleType, lacks=(), keep=None, **overrides) -> types.ModuleType:
    """A module that is ``real`` without ``lacks`` (or with only ``keep``), with ``overrides``."""

    class View(types.ModuleType):
        def __getattr__(self, attr):
            if attr in overrides:
                return overrides[attr]
            if attr in lacks or (keep is not None and attr not in keep and not attr.startswith("__")):
                raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
            return getattr(real, attr)

        def __dir__(self):
            return sorted(a for a in [*dir(real), *overrides] if a not in lacks
                          and (keep is None or a in keep or a.startswith("__") or a in overrides))

    view = View(module_name)
    view.__file__ = getattr(real, "__file__", None)
    return view


def _os_view(lacks: set[str]) -> types.ModuleType:
    windows = SYSTEM == "windows"

    def stat(path, *, dir_fd=None, follow_symlinks=True):
        if dir_fd is not None and windows:
            raise NotImplementedError("stat: dir_fd unavailable on this platform")
        _no_proc(path)
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    def listdir(path="."):
        if isinstance(path, int) and windows:
            raise TypeError("listdir: path should be string, bytes or os.PathLike, not int")
        _no_proc(path)
        return os.listdir(path)

    def scandir(path="."):
        if isinstance(path, int) and windows:
            raise TypeError("scandir: path should be string, bytes or os.PathLike, not int")
        _no_proc(path)
        return os.scandir(path)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and windows:
            raise NotImplementedError("open: dir_fd unavailable on this platform")
        _no_proc(path)
        return os.open(path, flags, mode, dir_fd=dir_fd)

    overrides = {"stat": stat, "listdir": listdir, "scandir": scandir, "open": open_}
    if windows:
        overrides.update(supports_dir_fd=set(), supports_fd={stat}, supports_follow_symlinks={stat},
                         O_BINARY=0, name="nt")
    else:
        overrides.update(supports_dir_fd={*os.supports_dir_fd, stat, open_},
                         supports_fd={*os.supports_fd, stat, listdir, scandir})
    return _view("os", os, lacks, **overrides)


class _Msvcrt(types.ModuleType):
    """Windows' ``msvcrt.locking`` over POSIX record locks: a byte range locked from the file's
    position, OSError if another process holds it."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self, fcntl):
        super().__init__("msvcrt")
        self._fcntl = fcntl

    def locking(self, fd, mode, nbytes):
        fcntl = self._fcntl
        start = os.lseek(fd, 0, os.SEEK_CUR)
        command = {self.LK_UNLCK: fcntl.LOCK_UN, self.LK_LOCK: fcntl.LOCK_EX, self.LK_RLCK: fcntl.LOCK_EX,
                   self.LK_NBLCK: fcntl.LOCK_EX | fcntl.LOCK_NB, self.LK_NBRLCK: fcntl.LOCK_EX | fcntl.LOCK_NB}[mode]
        try:
            fcntl.lockf(fd, command, nbytes, start, os.SEEK_SET)
        except OSError as exc:
            raise PermissionError(13, "Permission denied") from exc


def _cnnlab_modules() -> dict[str, types.ModuleType | None]:
    """Module name -> what cnnlab gets for it (None: it does not import)."""
    import multiprocessing

    modules: dict[str, types.ModuleType | None] = {}
    system = {"windows": "Windows", "macos": "Darwin"}[SYSTEM]
    modules["platform"] = _view("platform", platform, system=lambda: system)
    if SYSTEM == "windows":
        import fcntl

        modules.update(fcntl=None, termios=None, resource=None, pwd=None, grp=None)
        modules["msvcrt"] = _Msvcrt(fcntl)
        modules["os"] = _os_view(WINDOWS_OS_LACKS)
        modules["signal"] = _view("signal", signal, keep=WINDOWS_SIGNALS)
        modules["multiprocessing"] = _view("multiprocessing", multiprocessing,
                                           get_all_start_methods=lambda: ["spawn"])
    else:
        modules["os"] = _os_view(MACOS_OS_LACKS)
    return modules


def _install_import_hook(modules: dict[str, types.ModuleType | None]) -> None:
    real_import = builtins.__import__

    def simulated_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__") or ""
        top = name.partition(".")[0]
        if level == 0 and top in modules and (importer == "cnnlab" or importer.startswith("cnnlab.")):
            module = modules[top]
            if module is None:
                raise ModuleNotFoundError(f"No module named {top!r}", name=top)
            if fromlist and not isinstance(module, _Msvcrt):
                real_import(name, globals, locals, fromlist, level)   # submodules named in fromlist load
            if name == top or not fromlist:
                return module
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = simulated_import


# --- What every process meets: start methods, /proc, files held open ------------------------------

def _spawn_by_default(only: bool) -> None:
    import multiprocessing
    from multiprocessing import context

    multiprocessing.set_start_method("spawn", force=True)
    if only:
        for method in ("fork", "forkserver"):
            context._concrete_contexts.pop(method, None)


def _open_as_the_system_does() -> None:
    """cnnlab's ``open``: no /proc; on Windows, a text file without ``encoding=`` in the encoding of an
    English Windows (cp1252), whatever this machine's locale says."""
    real_open = builtins.open

    def simulated_open(file, mode="r", *args, **kwargs):
        if _from_cnnlab(2):
            _no_proc(file)
            if SYSTEM == "windows" and "b" not in mode and len(args) < 2 and kwargs.get("encoding") is None:
                kwargs["encoding"] = "cp1252"
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = simulated_open


class _OpenFiles:
    """The files open in this process, as Windows counts them to refuse a replace or a removal."""

    def __init__(self):
        self.fds: dict[int, tuple[int, int]] = {}
        self.objects: list[tuple[weakref.ref, tuple[int, int]]] = []
        self.elsewhere = [os.path.abspath(p) for p in json.loads(os.environ.get("CNNLAB_SIMULATE_HELD") or "[]")]

    @staticmethod
    def _key(st) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def holds(self, path) -> bool:
        try:
            key = self._key(os.stat(path))
        except (OSError, TypeError, ValueError):
            return False
        if os.path.abspath(os.fsdecode(os.fspath(path))) in self.elsewhere:
            return True
        for fd, fd_key in list(self.fds.items()):
            try:
                alive = self._key(os.fstat(fd)) == fd_key
            except OSError:
                alive = False
            if not alive:
                del self.fds[fd]
            elif fd_key == key:
                return True
        self.objects = [(ref, k) for ref, k in self.objects if ref() is not None and not ref().closed]
        return any(k == key for _, k in self.objects)


def _refuse_changes_to_open_files() -> None:
    open_files = _OpenFiles()
    real = {name: getattr(os, name) for name in ("open", "replace", "rename", "unlink", "remove")}
    real_open = builtins.open

    def track_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real["open"](path, flags, mode, dir_fd=dir_fd)
        try:
            open_files.fds[fd] = open_files._key(os.fstat(fd))
        except OSError:
            pass
        return fd

    def track_file(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        if not isinstance(file, int):
            try:
                open_files.objects.append((weakref.ref(f), open_files._key(os.fstat(f.fileno()))))
            except (OSError, TypeError, ValueError, io.UnsupportedOperation):
                pass
        return f

    def refused(code: int, text: str, path) -> PermissionError:
        exc = PermissionError(13, text, os.fsdecode(os.fspath(path)))
        exc.winerror = code
        return exc

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None, name="replace"):
        if open_files.holds(src) or open_files.holds(dst):
            raise refused(5, "Access is denied", dst)
        return real[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if os.path.exists(dst):
            raise FileExistsError(17, "Cannot create a file when that file already exists", os.fsdecode(dst))
        return replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, name="rename")

    def unlink(path, *, dir_fd=None):
        if open_files.holds(path):
            raise refused(32, "The process cannot access the file because it is being used by another process",
                          path)
        return real["unlink"](path, dir_fd=dir_fd)

    os.open, os.replace, os.rename, os.unlink, os.remove = track_open, replace, rename, unlink, unlink
    builtins.open = io.open = track_file


class _AfterImport:
    """Runs ``patch(module)`` once ``name`` is imported (a meta path finder that wraps its loader)."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            exec_module, patch = spec.loader.exec_module, self.patch

            def exec_and_patch(module):
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
        return spec


def _tcp_stores_without_libuv(rendezvous) -> None:
    """PyTorch for Windows is built without libuv: a TCP store that asks for it fails, as there."""
    real = rendezvous.TCPStore

    def TCPStore(*args, use_libuv=True, **kwargs):
        if use_libuv:
            raise RuntimeError("use_libuv was requested but PyTorch was built without libuv support, "
                               "run with USE_LIBUV=0 to disable it.")
        return real(*args, use_libuv=False, **kwargs)

    rendezvous.TCPStore = TCPStore
    sys.modules["torch.distributed"].TCPStore = TCPStore


if SYSTEM in ("windows", "macos"):
    _spawn_by_default(only=SYSTEM == "windows")
    if SYSTEM == "windows":
        _refuse_changes_to_open_files()
        sys.meta_path.insert(0, _AfterImport("torch.distributed.rendezvous", _tcp_stores_without_libuv))
    _open_as_the_system_does()
    _install_import_hook(_cnnlab_modules())
elif SYSTEM:
    raise SystemExit(f"CNNLAB_SIMULATE={SYSTEM!r}: say windows or macos")
