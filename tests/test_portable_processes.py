"""cnnlab.portable's processes section on each system, the system simulated: portable's LINUX/MACOS/WINDOWS,
and the os/signal functions a system lacks taken away."""

from __future__ import annotations

import importlib.machinery
import multiprocessing
import sys
import types

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
