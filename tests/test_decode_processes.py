"""Decoding an image folder in several processes, however this system starts them: fork (Linux), spawn
(macOS, Windows), or not at all; checked against Pillow, and with Windows' spawn-only multiprocessing
simulated in a child interpreter for the scripts people write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.idx import read_idx

REPO = Path(__file__).resolve().parents[1]

SPAWN_ONLY = '''
"""Windows' multiprocessing, as far as cnnlab can tell: spawn is the only start method, and
platform.system() answers "Windows" to cnnlab's own modules."""
import multiprocessing
import multiprocessing.context
import platform
import sys

multiprocessing.context._concrete_contexts.pop("fork", None)
multiprocessing.context._concrete_contexts.pop("forkserver", None)
multiprocessing.get_all_start_methods = lambda: ["spawn"]
multiprocessing.set_start_method("spawn", force=True)
_system = platform.system


def _system_for_caller():
    caller = sys._getframe(1).f_globals.get("__name__", "")
    return "Windows" if caller.split(".")[0] == "cnnlab" else _system()


platform.system = _system_for_caller
'''


def image_tree(root: Path, mnist_subset: Path, n: int = 600) -> dict[str, np.ndarray]:
    """``n`` MNIST digits as PNG files in two class folders, every third one 32 x 32 (so Pillow resizes
    it, the others are read as they are).  Returns path -> the 28 x 28 array Pillow gives for it."""
    images = read_idx(mnist_subset / "train-images-idx3-ubyte.gz")[:n]
    expected = {}
    for i, image in enumerate(images):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        picture = Image.fromarray(image)
        if i % 3 == 0:
            picture = picture.resize((32, 32), Image.Resampling.BICUBIC)
        picture.save(path)
        with Image.open(path) as img:
            expected[str(path)] = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    return expected


def in_cnnlab_order(expected: dict[str, np.ndarray]) -> np.ndarray:
    """The arrays in the order the folder is read: class folder, then file name."""
    return np.stack([expected[path] for path in sorted(expected, key=lambda p: (Path(p).parent.name, p))])[:, None]


def test_the_decoding_module_imports_no_torch():
    """What a spawned decoding process imports: torch alone took about 6 s per process on Windows."""
    code = ("import sys, cnnlab.data.decode, cnnlab.data.folder; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'matplotlib'}))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("method", ["fork", "spawn", None])
def test_decoded_arrays_equal_pillows_however_processes_start(tmp_path, mnist_subset, monkeypatch, capsys, method):
    import multiprocessing

    from cnnlab import portable
    from cnnlab.data import folder

    if method == "fork" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("this system has no fork")
    expected = image_tree(tmp_path / "tree", mnist_subset)
    started = []

    class Recording(portable.ProcessPoolExecutor):
        def __init__(self, workers, mp_context):
            started.append(mp_context.get_start_method())
            super().__init__(workers, mp_context=mp_context)

    monkeypatch.setattr(portable, "ProcessPoolExecutor", Recording)
    monkeypatch.setattr(folder.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(folder, "SPAWN_MIN_IMAGES", 0)
    monkeypatch.setattr(portable, "worker_start_method", lambda: method)
    monkeypatch.setattr(portable, "unguarded_main_script", lambda: "/somewhere/train_mine.py")
    splits, skipped, *_ = folder.decode(folder.scan_folder(tmp_path / "tree"), 28, 1, progress=False)
    assert started == ([method] if method else [])
    assert not skipped
    images, labels = splits["train"]
    assert images.dtype == np.uint8 and images.shape == (600, 1, 28, 28)
    assert np.array_equal(images, in_cnnlab_order(expected))
    assert labels.tolist() == [0] * 300 + [1] * 300
    err = capsys.readouterr().err
    if method is None:   # a script spawned processes would re-run: this process decodes, and says why
        assert err == ("note: decoding 600 images in one process: worker processes would start by running "
                       "/somewhere/train_mine.py again; put its work under `if __name__ == \"__main__\":` "
                       "to decode on every core\n")
    else:
        assert err == ""


def child_env(sitecustomize: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(sitecustomize)] if sitecustomize else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_spawn_only(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """``script`` run as a main script, as on Windows: multiprocessing can only spawn."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(SPAWN_ONLY)
    path = tmp_path / "train_mine.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=child_env(tmp_path / "site"),
                          capture_output=True, text=True, timeout=240)


def test_a_script_without_a_main_guard_trains_on_a_folder_where_processes_are_spawned(tmp_path, mnist_subset):
    """Spawned decoding processes re-ran such a script from the top, and it died of BrokenProcessPool."""
    image_tree(tmp_path / "tree", mnist_subset)
    proc = run_spawn_only(tmp_path, f"""
        import multiprocessing, sys
        from cnnlab.train import TrainConfig, train

        assert multiprocessing.get_all_start_methods() == ["spawn"]
        result = train(TrainConfig(data={str(tmp_path / "tree")!r}, epochs=1, batch_size=64, device="cpu"),
                       run_dir={str(tmp_path / "run")!r}, progress=False)
        print("trained", result["run_dir"])
        """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"trained {tmp_path / 'run'}" in proc.stdout
    assert "note: decoding" not in proc.stderr      # 600 images: one process is the fastest anyway


@pytest.mark.parametrize("guarded", [False, True])
def test_a_large_folder_is_decoded_in_spawned_processes_only_from_a_guarded_script(tmp_path, mnist_subset, guarded):
    """With a main guard the spawned processes decode (they re-run the script, which then does nothing);
    without one, this process does, and a note says why."""
    expected = image_tree(tmp_path / "tree", mnist_subset)
    body = f"""
        import numpy as np
        from cnnlab import portable
        from cnnlab.data import folder
        from cnnlab.data.dataset import read_source

        folder.SPAWN_MIN_IMAGES = 0     # 600 images stand for a large folder
        started = []

        class Recording(portable.ProcessPoolExecutor):
            def __init__(self, workers, mp_context):
                started.append(mp_context.get_start_method())
                super().__init__(workers, mp_context=mp_context)

        portable.ProcessPoolExecutor = Recording
        folder.os.cpu_count = lambda: 2
        read = read_source({str(tmp_path / "tree")!r}, image_size=28, channels=1, progress=False)
        np.save({str(tmp_path / "train_x.npy")!r}, read["arrays"]["train_x"])
        print("pools", started, "method", portable.worker_start_method())
        """
    if guarded:
        body = "def main():\n" + textwrap.indent(textwrap.dedent(body), "    ") + \
            "\n\nif __name__ == \"__main__\":\n    main()\n"
    proc = run_spawn_only(tmp_path, body)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "train_x.npy"), in_cnnlab_order(expected))
    if guarded:
        assert "pools ['spawn'] method spawn" in proc.stdout
        assert proc.stderr == ""
    else:
        assert "pools [] method None" in proc.stdout
        assert proc.stderr == (f"note: decoding 600 images in one process: worker processes would start by running "
                               f"{tmp_path / 'train_mine.py'} again; put its work under "
                               f"`if __name__ == \"__main__\":` to decode on every core\n")
