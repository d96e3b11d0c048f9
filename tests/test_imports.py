"""The package's import structure: every module imports on its own, module-level imports form no cycle,
and the library never imports the command line (``cnnlab.cli``)."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import cnnlab

PACKAGE_DIR = Path(cnnlab.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of cnnlab (packages as their __init__.py), by dotted name."""
    found = {"cnnlab": PACKAGE_DIR / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="cnnlab."):
        base = PACKAGE_DIR.joinpath(*info.name.split(".")[1:])
        found[info.name] = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules imported when ``name`` is executed, modules imported anywhere in it), within cnnlab.

    Module level means statements run at import: the module's body, including ``if``/``try`` blocks, but
    not function bodies and not ``if TYPE_CHECKING:`` blocks.  ``from a import b`` imports ``a.b`` where
    that is a module, else ``a``; relative imports are resolved against the module's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def targets(node) -> set[str]:
        out = set()
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
        return {t for t in out if t == "cnnlab" or t.startswith("cnnlab.")}

    def walk(body, top: bool, top_level: set[str], anywhere: set[str]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = targets(node)
                anywhere |= found
                if top:
                    top_level |= found
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(ast.iter_child_nodes(node), False, top_level, anywhere)
            elif isinstance(node, ast.If) and _type_checking(node):
                walk(node.body, False, top_level, anywhere)
                walk(node.orelse, top, top_level, anywhere)
            else:
                walk(ast.iter_child_nodes(node), top, top_level, anywhere)

    top_level, anywhere = set(), set()
    walk(tree.body, True, top_level, anywhere)
    return top_level, anywhere


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_module_level_imports_only(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nimport cnnlab.errors\nfrom . import fileio\n"
                      "from .train import steps, TrainConfig\ntry:\n    from cnnlab import device\nexcept ImportError:\n"
                      "    pass\nif TYPE_CHECKING:\n    from cnnlab.train.engine import Trainer\n"
                      "def f():\n    from cnnlab.cli import main\n")
    known = {"cnnlab", "cnnlab.errors", "cnnlab.fileio", "cnnlab.train", "cnnlab.train.steps", "cnnlab.device"}
    top, anywhere = imports("cnnlab.mod", source, known)
    assert top == {"cnnlab.errors", "cnnlab.fileio", "cnnlab.train", "cnnlab.train.steps", "cnnlab.device"}
    assert anywhere == top | {"cnnlab.train.engine", "cnnlab.cli"}


def test_module_level_imports_form_no_cycle():
    found = modules()
    graph = {name: imports(name, path, set(found))[0] - {name} for name, path in found.items()}
    assert len(graph) > 40        # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_library_never_imports_the_command_line():
    found = modules()
    offenders = {name: sorted(t for t in imports(name, path, set(found))[1] if t == "cnnlab.cli" or
                              t.startswith("cnnlab.cli."))
                 for name, path in found.items() if not (name == "cnnlab.cli" or name.startswith("cnnlab.cli.")
                                                         or name == "cnnlab.__main__")}
    assert not {k: v for k, v in offenders.items() if v}


def test_every_module_imports_in_a_fresh_interpreter():
    """Every module imports, in an interpreter that has imported nothing of cnnlab before (so nothing this
    test process holds hides a failure); an order-dependent cycle is the module-level graph's test."""
    names = sorted(modules())
    script = (
        "import importlib, json, sys, traceback\n"
        "failed = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = traceback.format_exception_only(type(exc), exc)[-1].strip()\n"
        "print(json.dumps(failed))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(names)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {}
