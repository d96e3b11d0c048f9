"""examples/lenet.ipynb runs top to bottom in a Jupyter kernel and draws the live Animator."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lenet.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.cells[-1].source.count("num_epochs = 0.9, 10") == 1   # the book's cell; one epoch here
    nb.cells[-1].source = nb.cells[-1].source.replace("num_epochs = 0.9, 10", "num_epochs = 0.9, 1")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("from cnnlab import d2l" in cell.source for cell in code)
    assert not any("from d2l import" in cell.source for cell in code)


@pytest.mark.slow
def test_lenet_notebook_executes_and_animates(fashion_dir, monkeypatch, tmp_path):
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        pytest.skip("no python3 Jupyter kernel spec is installed")
    monkeypatch.setenv("CNNLAB_DATA", str(fashion_dir))  # the kernel inherits this process's environment
    # The kernel is another process: an IPython start-up file puts the committed subset in its registry
    # too, as fashion_dir does here, so it finds and verifies the subset as it would the full data.
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-subset-registry.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import conftest\n"
        "sys.path.pop(0)\n"
        "class _SetItem:\n"
        "    setitem = staticmethod(dict.__setitem__)\n"
        "conftest.use_subset_registry(_SetItem())\n"
        "del sys, conftest, _SetItem\n")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # The kernel runs in another folder: make it import the cnnlab under test, not another install.
    import cnnlab

    package_root = str(Path(cnnlab.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    train_cell = nb.cells[-1]
    assert "train_ch6(" in train_cell.source
    text = "".join(out.get("text", "") for out in train_cell.outputs if out.output_type == "stream")
    lines = text.splitlines()
    assert lines[0].startswith("training on ")
    assert re.fullmatch(r"loss \d+\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", lines[-2])
    assert lines[-1].endswith(" examples/sec on " + lines[0].removeprefix("training on "))
    figures = [out for out in train_cell.outputs if out.output_type == "display_data"]
    assert len(figures) == 1  # one figure, redrawn in place (the updates replaced its content)
    svg = figures[0].data["image/svg+xml"]
    assert "<svg" in svg and "test acc" in svg
    # Headless files are for scripts: in the notebook nothing is written next to it.
    assert not (tmp_path / "animator.png").exists()
