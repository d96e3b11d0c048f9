"""Where results go: an output folder that cannot be written, a file where a folder should be, an
image format matplotlib does not write, and counts too large to draw are each one line, not a traceback."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

import cnnlab.data.sources as sources
from cnnlab import fileio, portable
from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train.config import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    sources.forget_loaded()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny real run (64 training images, one epoch) for evaluate and inspect."""
    from cnnlab.train.run import train
    from conftest import SUBSET_DATA

    run = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(data_dir=str(SUBSET_DATA), verify=False, train_limit=64, test_limit=64, batch_size=32, epochs=1),
          run_dir=run, progress=False)
    return run


@pytest.fixture
def read_only_disk(monkeypatch):
    """Creating files fails as on a read-only mount (root ignores chmod, so tests cannot use it)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(portable, "new_file", refuse)  # every file cnnlab makes starts there


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):].rstrip("\n")


# ---------------------------------------------------------------- fileio


def test_writing_into_a_read_only_folder_names_the_folder(tmp_path, read_only_disk):
    with pytest.raises(CnnlabError) as info:
        fileio.write_text(tmp_path / "out" / "a.txt", "x")
    assert str(info.value) == (f"cannot write into {tmp_path / 'out'}: Read-only file system; "
                               f"choose a writable output folder or fix its permissions")


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_file_where_a_folder_should_be_is_named(tmp_path, below):
    blocker = tmp_path / "checkpoint.pt"
    blocker.write_bytes(b"x")
    folder = blocker / below if below else blocker
    with pytest.raises(CnnlabError) as info:
        fileio.write_text(folder / "a.txt", "x")
    assert str(info.value) == (f"cannot use {folder} as a folder: {blocker} is a file; "
                               f"choose another output folder or move the file away")
    assert blocker.read_bytes() == b"x"


def test_writing_onto_a_folder_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CnnlabError, match="it is a folder; give a file name instead"):
        fileio.write_text(tmp_path / "d", "x")


def is_char_device(path) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


def test_a_fifo_is_written_in_place_not_replaced(tmp_path):
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    fileio.write_bytes(fifo, b"model bytes")
    reader.join(timeout=60)
    assert received == [b"model bytes"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["stream"]      # no temporary file left beside it


def test_a_link_to_the_null_device_discards_the_output_and_leaves_both(tmp_path):
    link = tmp_path / "discard.onnx"
    link.symlink_to(os.devnull)
    fileio.write_bytes(link, b"model bytes")
    fileio.write_text(link, "text")
    assert link.is_symlink() and os.readlink(link) == os.devnull
    assert is_char_device(os.devnull)


def test_a_link_to_another_device_is_refused_and_left_alone(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(CnnlabError) as info:
        fileio.check_output_file(link)
    assert str(info.value) == (f"cannot write {link}: it is a device, not a regular file; "
                               f"give a file name instead")
    with pytest.raises(CnnlabError, match="it is a device"):
        fileio.write_bytes(link, b"x")
    assert link.is_symlink() and is_char_device("/dev/zero")
    assert [p.name for p in tmp_path.iterdir()] == ["zero.png"]


def test_a_link_to_a_regular_file_replaces_that_file_and_keeps_the_link(tmp_path):
    (tmp_path / "models").mkdir()
    real = tmp_path / "models" / "v3.onnx"
    real.write_bytes(b"old")
    link = tmp_path / "latest.onnx"
    link.symlink_to(real)
    fileio.write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["latest.onnx", "models", "v3.onnx"]


def test_a_folder_is_refused_before_the_work(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CnnlabError, match="it is a folder; give a file name instead"):
        fileio.check_output_file(tmp_path / "d")


def test_a_free_name_is_taken_once(tmp_path):
    """Written with replace=False, a file whose name another process took meanwhile is left as it is."""
    out = tmp_path / "model.onnx"
    fileio.write_bytes(out, b"first", replace=False)
    with pytest.raises(fileio.OutputExistsError, match="already exists"):
        fileio.write_bytes(out, b"second", replace=False)
    assert out.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("target, status", [(os.devnull, 0), ("/dev/zero", 2)])
def test_data_show_into_a_link_to_a_device(tmp_path, fashion_subset, capsys, target, status):
    link = tmp_path / "grid.png"
    link.symlink_to(target)
    assert main(["data", "show", "--no-verify", "--data-dir", str(fashion_subset), "--out", str(link)]) == status
    if status:
        assert error_line(capsys) == f"cannot write {link}: it is a device, not a regular file; give a file name instead"
    assert link.is_symlink() and is_char_device(target)


def test_lr_find_into_a_file_is_one_error(tmp_path):
    from cnnlab.lrfind import LRFindResult, write_lr_find

    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    result = LRFindResult([1e-3, 1e-2, 1e-1], [2.3, 2.0, 2.5], 1e-2, 1e-2)
    with pytest.raises(CnnlabError, match="is a file; choose another output folder"):
        write_lr_find(result, tmp_path / "checkpoint.pt")


def test_lr_find_into_a_read_only_folder_fails_before_training(tmp_path, fashion_subset, read_only_disk, capsys,
                                                                monkeypatch):
    import cnnlab.lrfind

    monkeypatch.setattr(cnnlab.lrfind, "lr_range_test", lambda *a, **k: pytest.fail("trained before the check"))
    assert main(["lr-find", "--data-dir", str(fashion_subset), "--no-verify", "--out-dir", str(tmp_path / "lr")]) == 2
    assert error_line(capsys) == (f"cannot write into {tmp_path / 'lr'}: Read-only file system; "
                                  f"choose a writable output folder or fix its permissions")


@pytest.mark.parametrize("name", ["g.xyz", "g.PNGX", "g.txt"])
def test_unknown_figure_formats_list_the_supported_ones(name):
    with pytest.raises(ConfigError) as info:
        fileio.check_figure_path(name, "--out")
    fmt = name.split(".")[1].lower()
    assert str(info.value).startswith(f"--out {name}: unknown image format '{fmt}'; end the file name in "
                                      f"one of .png, .pdf, .svg, ")


@pytest.mark.parametrize("name, starts", [("g.png", PNG), ("g.PDF", b"%PDF-"), ("g.svg", b"<?xml"),
                                           ("g.jpg", b"\xff\xd8\xff"), ("g", PNG)])
def test_known_figure_formats_are_written_in_that_format(tmp_path, name, starts):
    """A suffix the check lets through is the format the figure is written in (no suffix: PNG)."""
    from matplotlib.figure import Figure

    fileio.check_figure_path(name, "--out")
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    fileio.save_figure(tmp_path / name, fig)
    assert [p.name for p in tmp_path.iterdir()] == [name]      # written under the name given, nothing else
    data = (tmp_path / name).read_bytes()
    assert data.startswith(starts)
    if name.endswith(".svg"):
        assert b"<svg" in data


# ---------------------------------------------------------------- evaluate


def test_evaluate_refuses_an_unknown_format_before_loading_anything(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "c.xyz")]) == 2
    assert error_line(capsys).startswith(f"--out {tmp_path / 'c.xyz'}: unknown image format 'xyz'; ")


def test_evaluate_into_a_read_only_run_is_one_error(run_dir, fashion_subset, read_only_disk, capsys, monkeypatch):
    import cnnlab.data

    monkeypatch.setattr(cnnlab.data, "load_split", lambda *a, **k: pytest.fail("evaluated before the check"))
    assert main(["evaluate", str(run_dir), "--data-dir", str(fashion_subset), "--no-verify", "--device", "cpu"]) == 2
    assert error_line(capsys) == (f"cannot write into {run_dir}: Read-only file system; "
                                  f"choose a writable output folder or fix its permissions")


def test_evaluate_out_below_a_file_is_one_error(run_dir, fashion_subset, capsys):
    out = run_dir / "checkpoint.pt" / "c.png"
    assert main(["evaluate", str(run_dir), "--data-dir", str(fashion_subset), "--no-verify", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert error_line(capsys).startswith(f"cannot use {run_dir / 'checkpoint.pt'} as a folder: ")


# ---------------------------------------------------------------- inspect


def test_inspect_of_a_checkpoint_file_writes_beside_it(run_dir, fashion_subset, capsys):
    assert main(["inspect", str(run_dir / "checkpoint.pt"), "--data-dir", str(fashion_subset), "--no-verify",
                 "--test-limit", "64", "--max-misclassified", "4"]) == 0
    assert f"kernels: {run_dir / 'inspect' / 'kernels.png'}" in capsys.readouterr().out
    for figure in ("kernels.png", "misclassified.png"):
        assert (run_dir / "inspect" / figure).read_bytes()[:8] == PNG, figure


def test_inspect_into_a_read_only_folder_fails_before_the_work(run_dir, fashion_subset, monkeypatch, tmp_path,
                                                               capsys):
    import pathlib

    import cnnlab.data

    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == tmp_path / "ro" / "inspect":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    monkeypatch.setattr(cnnlab.data, "load_split", lambda *a, **k: pytest.fail("loaded data before the check"))
    assert main(["inspect", str(run_dir), "--data-dir", str(fashion_subset), "--no-verify",
                 "--out-dir", str(tmp_path / "ro" / "inspect")]) == 2
    assert error_line(capsys) == (f"cannot create folder {tmp_path / 'ro' / 'inspect'}: Read-only file system; "
                                  f"choose a writable output folder or fix its permissions")


@pytest.mark.parametrize("flags, message", [
    (["--test-limit", "-5"], "--test-limit must be a positive number of test images, got -5"),
    (["--test-limit", "0"], "--test-limit must be a positive number of test images, got 0"),
    (["--max-misclassified", "-1"], "--max-misclassified must be between 0 and 100 (images in the mistakes "
                                    "grid), got -1"),
    (["--max-misclassified", "100000"], "--max-misclassified must be between 0 and 100 (images in the "
                                        "mistakes grid), got 100000"),
])
def test_inspect_refuses_counts_it_cannot_draw(tmp_path, flags, message, capsys):
    assert main(["inspect", str(tmp_path / "no-such-run"), *flags]) == 2
    assert error_line(capsys) == message


# ---------------------------------------------------------------- predict


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (PIL reads the size before the data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


@pytest.mark.parametrize("side, pixels", [(30000, "900,000,000"), (10000, "100,000,000")])
def test_predict_refuses_an_image_too_large_to_read(run_dir, tmp_path, side, pixels, capsys):
    from PIL import Image

    huge = tmp_path / "huge.png"
    _png_header_only(huge, side, side)
    assert main(["predict", str(run_dir), str(huge), "--device", "cpu"]) == 2
    assert error_line(capsys) == (f"image {huge} is too large to read safely ({pixels} pixels, more than "
                                  f"{Image.MAX_IMAGE_PIXELS:,d}); shrink it first")


def test_a_confusion_figure_of_many_classes_draws_the_classes_with_most_errors():
    """A 10,000-class evaluation once spent over ten minutes drawing every cell of its confusion figure;
    past MAX_DRAWN_CLASSES the figure draws the classes with the most errors, and its title says so."""
    import numpy as np

    from cnnlab import viz

    n = 2000
    cm = np.diag(np.full(n, 50))
    wrong = list(range(7, n, 61))[:viz.MAX_DRAWN_CLASSES]   # confused with each other, 2 errors or more
    for k, c in enumerate(wrong):
        cm[c, wrong[(k + 1) % len(wrong)]] += k + 1
    cm[1, 2] = 1   # one error each for classes 1 and 2: fewer
    cm[3, 3] = 900   # many right answers are not errors
    classes = [f"类 {i}" for i in range(n)]
    assert viz.drawn_classes(cm) == wrong
    fig = viz.plot_confusion(cm, classes, title="run")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [classes[c] for c in wrong]
    assert ax.get_title() == f"run\nthe {len(wrong)} of 2,000 classes with the most errors"
    assert len(ax.texts) == len(wrong) ** 2
    assert viz.drawn_classes(cm[:10, :10]) == list(range(10))
    assert viz.plot_confusion(cm[:10, :10], classes[:10], title="run").axes[0].get_title() == "run"


def test_evaluate_says_which_classes_its_figure_leaves_out(run_dir, fashion_subset, tmp_path, monkeypatch, capsys):
    from cnnlab import viz

    monkeypatch.setattr(viz, "MAX_DRAWN_CLASSES", 3)
    out = tmp_path / "c.png"
    assert main(["evaluate", str(run_dir), "--data-dir", str(fashion_subset), "--no-verify", "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == (f"confusion matrix: {out} (the 3 of 10 classes with the most errors; "
                           f"the table above lists every class)")
    assert len([line for line in printed if line.split() and line.split()[-1].isdigit()]) == 11   # 10 classes, all
    assert out.read_bytes()[:8] == PNG
