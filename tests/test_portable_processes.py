"""cnnlab.portable's processes section on each system, the system simulated: portable's LINUX/MACOS/WINDOWS,
and the os/signal functions a system lacks taken away."""

from __future__ import annotations

import enum
import importlib.machinery
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cnnlab import portable


def as_system(monkeypatch, name: str) -> None:
    monkeypatch.setattr(portable, "SYSTEM", name)
    for flag, system in (("LINUX", "Linux"), ("MACOS", "Darwin"), ("WINDOWS", "Windows")):
        monkeypatch.setattr(portable, flag, name == system)
    if name == "Windows":
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])


def main_module(monkeypatch, tmp_path, source: str | None, module: str | None = None) -> str | None:
    """This process's ``__main__`` as a script holding ``source`` (None: no file, as in a notebook),
    run by path or, with ``module``, as ``python -m module``.  Returns the script's path."""
    main = types.ModuleType("__main__")
    path = None
    if source is not None:
        path = str(tmp_path / "train_mine.py")
        (tmp_path / "train_mine.py").write_text(source)
        main.__file__ = path
    main.__spec__ = importlib.machinery.ModuleSpec(module, None) if module else None
    monkeypatch.setitem(sys.modules, "__main__", main)
    return path


UNGUARDED = "from cnnlab.train import train\ntrain(None)\n"
GUARDED = "from cnnlab.train import train\n\nif __name__ == '__main__':\n    train(None)\n"


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_spawn_where_fork_is_unsafe_or_missing_and_nothing_when_it_would_re_run_a_script(monkeypatch, tmp_path,
                                                                                      system):
    as_system(monkeypatch, system)
    main_module(monkeypatch, tmp_path, GUARDED)
    assert portable.worker_start_method() == "spawn"      # macOS too, though it has fork
    path = main_module(monkeypatch, tmp_path, UNGUARDED)
    assert portable.unguarded_main_script() == path
    assert portable.worker_start_method() is None


def test_fork_on_linux_whatever_the_main_script(monkeypatch, tmp_path):
    as_system(monkeypatch, "Linux")
    main_module(monkeypatch, tmp_path, UNGUARDED)
    assert portable.worker_start_method() == "fork"


@pytest.mark.parametrize("source,module,rerun", [
    (GUARDED, None, False),
    ("if '__main__' == __name__:\n    pass\n", None, False),
    (UNGUARDED, None, True),
    ("def main():\n    if __name__ == '__main__':\n        pass\n", None, True),   # not at the top level
    (UNGUARDED, "train_mine", True),               # python -m train_mine: re-run as a module
    (UNGUARDED, "cnnlab.__main__", False),         # python -m cnnlab: multiprocessing leaves it alone
    (None, None, False),                           # a notebook, python -c, an interactive session
    ("this is not python(", None, True),           # cannot tell: assume the worst
])
def test_unguarded_main_script(monkeypatch, tmp_path, source, module, rerun):
    path = main_module(monkeypatch, tmp_path, source, module)
    assert portable.unguarded_main_script() == (path if rerun else None)


# ---- children of a launcher -------------------------------------------------------------------

def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def children():
    """Start sleeping child processes (``start(n)``); all are killed and collected at the end."""
    started = []

    def start(seconds: float = 60) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"]))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_child_pids_are_this_processes_children(children):
    procs = [children(), children()]
    assert set(portable.child_pids()) >= {p.pid for p in procs}
    assert os.getpid() not in portable.child_pids()


def test_without_proc_no_children_are_found(monkeypatch, children):
    children()
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": (_ for _ in ()).throw(FileNotFoundError(path))
                        if str(path) == "/proc" else real(path))
    assert portable.child_pids() == []


@pytest.mark.skipif(not portable.can_wake_stopped_children(), reason="needs os.waitid, SIGCHLD, SIGCONT and /proc")
def test_a_stopped_child_is_continued_when_another_exits(children):
    stopped, short = children(), children(0.2)
    os.kill(stopped.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while _state(stopped.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(stopped.pid) == "T"
    with portable.waking_stopped_children():
        deadline = time.monotonic() + 10
        while _state(stopped.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert short.poll() == 0            # it exited: its SIGCHLD continued the other one
    assert _state(stopped.pid) in "SR"


@pytest.mark.parametrize("missing", [("os", "waitid"), ("signal", "SIGCHLD"), ("signal", "SIGCONT")])
def test_waking_is_left_out_where_the_system_lacks_what_it_needs(monkeypatch, children, missing):
    """macOS before Python 3.13 has no os.waitid; Windows has none of the three.  A child that exits in
    the block is then no error (it was: AttributeError, after a finished run)."""
    module = {"os": os, "signal": signal}[missing[0]]
    monkeypatch.delattr(module, missing[1])
    handler = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    assert not portable.can_wake_stopped_children()
    with portable.waking_stopped_children():
        if hasattr(signal, "SIGCHLD"):
            assert signal.getsignal(signal.SIGCHLD) is handler
        children(0).wait()


def test_signal_names_where_the_system_names_them(monkeypatch):
    assert portable.signal_name(9) == "SIGKILL"
    assert portable.signal_name(15) == "SIGTERM"
    windows = enum.IntEnum("Signals", {"SIGINT": 2, "SIGILL": 4, "SIGFPE": 8, "SIGSEGV": 11, "SIGTERM": 15,
                                       "SIGBREAK": 21, "SIGABRT": 22})
    monkeypatch.setattr(signal, "Signals", windows)
    assert portable.signal_name(9) == "signal 9"
    assert portable.signal_name(15) == "SIGTERM"


# ---- torchrun's rendezvous ----------------------------------------------------------------------

@pytest.mark.parametrize("system", ["Linux", "Darwin"])
def test_the_rendezvous_is_torchruns_standalone_where_pytorch_has_libuv(monkeypatch, system):
    as_system(monkeypatch, system)
    with portable.local_rendezvous() as (args, env):
        assert (args, env) == (["--standalone"], {})


def test_on_windows_the_rendezvous_goes_through_a_file_and_no_store_asks_for_libuv(monkeypatch):
    as_system(monkeypatch, "Windows")
    with portable.local_rendezvous() as (args, env):
        endpoint = Path(next(a for a in args if a.startswith("--rdzv-endpoint=")).split("=", 1)[1])
        assert endpoint.parent.is_dir() and not endpoint.exists()
        assert "--standalone" not in args
        assert {"--rdzv-backend=c10d", "--rdzv-conf=store_type=file", "--nnodes=1"} <= set(args)
        assert env == {"USE_LIBUV": "0", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    assert not endpoint.parent.exists()


# ---- what --nproc refuses, in one line -----------------------------------------------------------

@pytest.mark.parametrize("device,available,words", [
    ("mps", {}, "mps has no distributed backend: use --device cpu"),
    ("cuda", {"is_nccl_available": False}, "--nproc on CUDA needs NCCL"),
    ("cpu", {"is_gloo_available": False}, "--nproc on the CPU needs gloo"),
    ("cpu", {"is_available": False}, "--nproc needs torch.distributed"),
])
def test_a_launch_pytorch_cannot_make_here_is_refused_in_one_line(monkeypatch, device, available, words):
    import torch
    import torch.distributed as dist

    from cnnlab import distributed
    from cnnlab.distributed import check_launch
    from cnnlab.errors import ConfigError

    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device(device))   # where check_launch reads it
    for name, value in available.items():
        monkeypatch.setattr(dist, name, lambda value=value: value)
    with pytest.raises(ConfigError) as exc:
        check_launch("auto")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_cpu_launch_is_not_refused():
    from cnnlab.distributed import check_launch

    check_launch("cpu")
