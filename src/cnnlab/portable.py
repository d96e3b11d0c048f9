"""What differs between operating systems, in one place: cnnlab runs on Linux, macOS and Windows.

Nothing else in the package calls an API that one of them lacks (``fcntl``, ``os.O_DIRECTORY``,
``dir_fd``, ``os.fchmod``, ``os.sysconf``, fork, ``/proc``, ...); ``tests/test_portable.py`` checks
that.  Each primitive here takes the fast or native route where the platform has it and a portable
route beside it, chosen by what the running system offers.
"""

from __future__ import annotations

import ast
import contextlib
import multiprocessing
import os
import platform
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator

SYSTEM = platform.system()
"""``Linux``, ``Darwin`` (macOS) or ``Windows``: the one place cnnlab asks which system it runs on."""
WINDOWS = SYSTEM == "Windows"
MACOS = SYSTEM == "Darwin"
LINUX = SYSTEM == "Linux"


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
