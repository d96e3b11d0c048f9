"""cnnlab's main jobs on Windows and macOS, simulated on Linux (tests/simulated_os/): each in a fresh
process, on a learner's notes folder whose path and class names are Chinese, with the console
encodings those systems give a redirected or piped output.  Every command ends with exit 0, or with
one line saying why it cannot (exit 2), and never with a traceback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from book_code import CNNLAB_IMPORTS, chapter_text, python_blocks
from conftest import REPO, SUBSET_DATA
from platforms import run, simulated_env

NOTES = "d2l笔记： 6 卷积神经网络"
CLASSES = ["T恤", "裤子", "套衫"]
"""Fashion-MNIST's first three classes, as the book's Chinese edition names them."""
TINY = ["--epochs", "1", "--no-progress", "--batch-size", "64"]


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    """``<tmp>/d2l笔记： 6 卷积神经网络/``: ``数据 集/{train,test}/<Chinese class>/*.png`` (real Fashion-MNIST
    images), a photo to predict, and the chapter's LeNet code as a learner saves it (no main guard)."""
    from cnnlab.data.sources import read_idx

    root = tmp_path_factory.mktemp("platforms") / NOTES
    for split, prefix, n in (("train", "train", 100), ("test", "t10k", 10)):
        images = read_idx(SUBSET_DATA / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(SUBSET_DATA / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(CLASSES):
            folder = root / "数据 集" / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images[labels == label][:n]):
                Image.fromarray(image).save(folder / f"图 {i:03d}.png")
    Image.fromarray(255 - read_idx(SUBSET_DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[1]).save(
        root / "我的 照片.png")
    blocks = python_blocks(chapter_text())
    code = CNNLAB_IMPORTS + "\n".join(blocks)
    assert code.count("lr, num_epochs = 0.9, 10") == 1
    (root / "第6章 LeNet.py").write_text(code.replace("lr, num_epochs = 0.9, 10", "lr, num_epochs = 0.9, 1"),
                                        encoding="utf-8")
    return root


def serve_and_fetch(system: str, run_dir, cwd, encoding: str) -> str | None:
    """``cnnlab explain RUN --port 0``: the page fetched once, then Ctrl-C; what went wrong, or None."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "explain", str(run_dir), "--port", "0"], cwd=cwd,
                            env=simulated_env(system, encoding), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode(encoding, "replace")
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            proc.kill()
            return f"explain printed {line!r}; stderr: {proc.communicate(timeout=60)[1][-2000:]!r}"
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/", timeout=60) as response:
            page = response.read().decode("utf-8")
        if "<html" not in page.lower():
            return f"explain served no page: {page[:200]!r}"
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode(encoding, "replace")
        if "Traceback" in err:
            return f"explain: a traceback after Ctrl-C:\n{err[-3000:]}"
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("system, encoding, sink", [("windows", "cp1252", "file"), ("macos", "utf-8", "pipe")])
def test_the_main_jobs_run_on_a_chinese_notes_folder(system, encoding, sink, notes, tmp_path):
    workspace = tmp_path / NOTES
    workspace.mkdir()
    data, runs = notes / "数据 集", workspace / "运行 记录"
    registry_run, folder_run = runs / "时尚 LeNet", runs / "自己的 数据"
    registry_data = ["--data-dir", str(SUBSET_DATA), "--no-verify"]
    steps = [
        ["data", "info", "--data", str(data)],
        ["train", *registry_data, "--train-limit", "512", "--test-limit", "256", *TINY, "--run-dir", str(registry_run)],
        ["train", "--data", str(data), *TINY, "--run-dir", str(folder_run)],
        ["evaluate", str(folder_run)],
        ["predict", str(folder_run), str(notes / "我的 照片.png"), "--index", "0"],
        ["export", str(folder_run), "--format", "onnx"],
        ["compare", str(registry_run), str(folder_run), "--out", str(workspace / "对比.png")],
    ]
    problems = []
    for argv in steps:
        finished = run(system, argv, cwd=workspace, encoding=encoding, sink=sink)
        if finished.clean():
            problems.append(finished.clean())
    assert not problems, "\n\n".join(problems)
    assert (folder_run / "model.onnx").stat().st_size > 0 and (workspace / "对比.png").stat().st_size > 0
    assert serve_and_fetch(system, folder_run, workspace, encoding) is None

    # The chapter's LeNet, as a learner's script without a main guard, on cnnlab.d2l.
    chapter = run(system, [], cwd=workspace, encoding=encoding, sink=sink, timeout=600,
                  python=[str(REPO / "tests" / "run_with_subsets.py"), str(notes / "第6章 LeNet.py")],
                  CNNLAB_DATA=str(SUBSET_DATA))
    assert chapter.clean() is None, chapter.clean()
    assert re.search(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}", chapter.out), chapter.out
    assert (workspace / "animator.png").stat().st_size > 0

    # Two processes through torchrun, or one line saying why not.
    ddp = run(system, ["train", *registry_data, "--train-limit", "256", "--test-limit", "128", *TINY,
                       "--nproc", "2", "--run-dir", str(runs / "分布式")], cwd=workspace, encoding=encoding,
              sink=sink, timeout=600)
    assert ddp.clean() is None or ddp.one_line_error(), ddp.clean()


@pytest.mark.parametrize("encoding", ["cp1252", "gbk", "ascii"])
@pytest.mark.parametrize("sink", ["file", "pipe"])
def test_chinese_names_print_on_any_console(encoding, sink, notes, tmp_path):
    """A console that cannot encode a character gets a replacement, never an exception; one that can
    (GBK) gets the characters."""
    finished = run("windows", ["data", "info", "--data", str(notes / "数据 集")], cwd=tmp_path,
                   encoding=encoding, sink=sink)
    assert finished.clean() is None, finished.clean()
    for name in CLASSES:
        expected = name if encoding == "gbk" else name.encode(encoding, "replace").decode(encoding)
        assert re.search(rf"^\s+{re.escape(expected)}\s+\d+", finished.out, flags=re.M), finished.out


def test_a_file_held_open_by_another_program(notes, tmp_path):
    """Windows refuses to replace a file another program has open (a spreadsheet showing metrics.csv):
    training goes on and says so; a command whose output is held fails in one line naming it."""
    run_dir = tmp_path / "运行"
    args = ["train", "--data-dir", str(SUBSET_DATA), "--no-verify", "--train-limit", "256", "--test-limit", "128",
            "--no-progress", "--batch-size", "64", "--run-dir", str(run_dir)]
    first = run("windows", [*args, "--epochs", "1"], cwd=tmp_path)
    assert first.clean() is None, first.clean()
    held_metrics = (run_dir / "metrics.csv").read_bytes()
    held = (run_dir / "metrics.csv", run_dir / "curves.png")
    second = run("windows", ["train", "--resume", str(run_dir), "--epochs", "2", "--no-progress"], cwd=tmp_path,
                 held=held)
    assert second.clean() is None, second.clean()
    assert f"note: cannot replace {run_dir / 'metrics.csv'}: another program has it open" in second.err
    assert "epoch 2/2:" in second.out
    assert (run_dir / "metrics.csv").read_bytes() == held_metrics   # left as the other program sees it
    from cnnlab.train.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir)["state"]["epoch"] == 2   # the checkpoint is current

    out = tmp_path / "网格.png"
    out.write_bytes(b"held")
    shown = run("windows", ["data", "show", "--data-dir", str(SUBSET_DATA), "--no-verify", "--out", str(out)],
                cwd=tmp_path, held=(out,))
    assert shown.one_line_error() == (f"error: cannot replace {out}: another program has it open; close it there "
                                      f"(a spreadsheet, an image viewer, an editor) and run again"), shown.err
    assert out.read_bytes() == b"held" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_run_lock_across_processes_on_windows(tmp_path):
    """One writer per run: a second process is refused naming the first; a lock released on Windows (whose
    open file cannot be removed) leaves no note of a stale holder for the next command."""
    run_dir = tmp_path / "运行"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, cnnlab.runlock as r\nwith r.hold(sys.argv[1]):\n"
         "    print('held', flush=True); sys.stdin.readline()", str(run_dir)],
        env=simulated_env("windows"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        second = run("windows", [], cwd=tmp_path, python=[
            "-c", "import sys, cnnlab.runlock as r\ntry:\n    r.hold(sys.argv[1]).__enter__()\n"
                  "except r.RunInUseError as e:\n    print(e)", str(run_dir)])
        assert f"run directory {run_dir} is in use by pid {holder.pid}" in second.out, second.err
    finally:
        holder.communicate(b"\n", timeout=60)
    assert holder.returncode == 0, holder.stderr
    again = run("windows", [], cwd=tmp_path, python=[
        "-c", "import sys, cnnlab.runlock as r\nwith r.hold(sys.argv[1]):\n    print('held again')", str(run_dir)])
    assert again.clean() is None and again.out == "held again\n" and again.err == "", again.err
    assert not run_dir.exists()   # nothing was written: no empty run directory left behind


def test_the_simulation_is_windows_as_cnnlab_sees_it(tmp_path):
    """The simulation itself: inside cnnlab the POSIX-only surface is gone and an open file cannot be
    replaced; outside cnnlab (PyTorch, torchrun) Linux's surface is intact."""
    probe = (
        "import json, os, multiprocessing, cnnlab.portable as p\n"
        "import cnnlab.fileio\n"
        "seen = {'system': p.SYSTEM, 'fast': p.Folder.FAST}\n"
        "exec('import os as o, signal as s, multiprocessing as m\\nseen[\"fchmod\"] = hasattr(o, \"fchmod\")\\n"
        "seen[\"methods\"] = m.get_all_start_methods()\\n"
        "seen[\"sigkill\"] = hasattr(s, \"SIGKILL\")\\ntry:\\n    import fcntl\\n    seen[\"fcntl\"] = True\\n"
        "except ImportError:\\n    seen[\"fcntl\"] = False', {'__name__': 'cnnlab.probe', 'seen': seen})\n"
        "seen['outside'] = hasattr(os, 'fchmod')\n"
        "f = open('held.txt', 'w')\n"
        "try:\n    os.replace('new.txt', 'held.txt')\n    seen['replaced'] = True\n"
        "except PermissionError as e:\n    seen['replaced'] = e.winerror\n"
        "print(json.dumps(seen))\n")
    (tmp_path / "new.txt").write_text("new")
    finished = run("windows", [], cwd=tmp_path, python=["-c", probe])
    assert finished.clean() is None, finished.clean()
    assert json.loads(finished.out) == {"system": "Windows", "fast": False, "methods": ["spawn"], "fchmod": False,
                                        "sigkill": False, "fcntl": False, "outside": True, "replaced": 5}


def test_decoded_images_are_the_same_on_every_system(notes, tmp_path):
    """The image folder decodes to the same arrays whatever starts the decoding workers (fork on Linux,
    spawn on Windows and macOS)."""
    script = ("import sys, numpy as np\nfrom cnnlab.data.folder import scan_folder, decode\n"
              "splits = decode(scan_folder(sys.argv[1]), None, None, progress=False)[0]\n"
              "np.savez(sys.argv[2], **{k + '_x': v[0] for k, v in splits.items()})\n")
    arrays = {}
    for system in ("", "windows", "macos"):
        out = tmp_path / f"{system or 'linux'}.npz"
        finished = run(system, [], cwd=tmp_path, python=["-c", script, str(notes / "数据 集"), str(out)])
        assert finished.clean() is None, finished.clean()
        with np.load(out, allow_pickle=False) as f:
            arrays[system] = {k: f[k] for k in f.files}
    expected = np.stack([np.asarray(Image.open(p))[None] for p in
                         sorted((notes / "数据 集" / "test" / CLASSES[0]).iterdir())])
    for system, found in arrays.items():
        assert np.array_equal(found["test_x"][:len(expected)], expected), system
        assert all(np.array_equal(found[k], arrays[""][k]) for k in found), system
