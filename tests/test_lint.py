"""The code is lint-clean: pyflakes' rules (unused imports and names, undefined names) and pycodestyle's
errors, as pyproject.toml's [tool.ruff.lint] selects them, over the package, tests, benchmarks and tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, require


def ruff() -> str:
    """The ruff installed beside this Python (the test tools), else one on PATH."""
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    require(found is not None, "ruff", 'install the test tools: pip install -c constraints.txt -e ".[test]"')
    return found


def test_ruff_finds_nothing():
    proc = subprocess.run([ruff(), "check", "--no-cache", "src", "tests", "benchmarks", "tools"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_ruff_would_find_an_unused_import(tmp_path):
    """The check above can fail: the same rules find an unused import."""
    (tmp_path / "bad.py").write_text("import os\n", encoding="utf-8")
    proc = subprocess.run([ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "F401" in proc.stdout, proc.stdout
