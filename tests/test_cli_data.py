"""`cnnlab data info|download|show` as a user runs them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import cnnlab.data.sources as sources
from cnnlab.cli.main import build_parser, main


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    sources.forget_loaded()


def test_info_reports_place_verification_and_counts(fashion_dir, capsys):
    assert main(["data", "info", "--data-dir", str(fashion_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert f"found in: {fashion_dir} (via data_dir)" in out
    assert "verified: yes" in out
    assert "train: 2,000 examples (registry: 2,000)" in out and "test: 1,000 examples (registry: 1,000)" in out
    # Examples per class, as counted here from the label files.
    from cnnlab.data import get_spec, read_idx

    lines = out.splitlines()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        counted = np.bincount(read_idx(fashion_dir / f"{prefix}-labels-idx1-ubyte.gz"), minlength=10)
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{split}: "))
        table = [re.fullmatch(r"  (.+?)\s+([\d,]+)", line).groups() for line in lines[at + 1:at + 11]]
        assert table == [(name, f"{int(n):,d}") for name, n in zip(get_spec("fashion-mnist").classes, counted)]


def test_info_without_data_is_one_error_line(capsys):
    assert main(["data", "info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fashion-mnist not found") and err.count("\n") == 1


def test_unknown_dataset_is_one_error_line(fashion_subset, capsys):
    assert main(["data", "info", "--dataset", "emnist", "--data-dir", str(fashion_subset)]) == 2
    assert "known datasets: cifar10, fashion-mnist, kmnist, mnist" in capsys.readouterr().err


def test_show_writes_a_titled_grid(fashion_subset, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "--no-verify", "--data-dir", str(fashion_subset), "--out", str(out)]) == 0
    assert "18 test images" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
        pixels = np.asarray(picture.convert("L"))
    assert width == 9 * 1.5 * 100 and height == 2 * 1.5 * 100  # 9 x 2 images, 1.5 in each, 100 dpi
    assert pixels.min() < 20 and pixels.max() > 235  # black backgrounds and white paper around them


def test_show_titles_are_the_class_names(fashion_subset, monkeypatch, tmp_path):
    import cnnlab.viz

    captured = {}
    real = cnnlab.viz.show_images

    def spy(images, titles, nrows, ncols, scale=1.5):
        captured.update(titles=titles, shape=tuple(images.shape), grid=(nrows, ncols))
        return real(images, titles, nrows, ncols, scale)

    monkeypatch.setattr(cnnlab.viz, "show_images", spy)
    assert main(["data", "show", "--no-verify", "--data-dir", str(fashion_subset), "--n", "10", "--ncols", "5",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert captured["titles"] == ["ankle boot", "pullover", "trouser", "trouser", "shirt",
                                  "trouser", "coat", "shirt", "sandal", "sneaker"]
    assert captured["shape"] == (10, 1, 28, 28) and captured["grid"] == (2, 5)


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_flag_of_every_data_command_is_documented_with_its_default():
    data = _subparsers(build_parser())["data"]
    commands = _subparsers(data)
    assert set(commands) == {"info", "download", "show"}
    for name, parser in commands.items():
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
                assert action.option_strings[-1] in text
        assert text.count("(default:") >= len([a for a in parser._actions if a.option_strings]) - 1, name


@pytest.mark.parametrize("flags, message", [
    (["--scale", "0"], "--scale 0 is not a size in inches per image; use a number above 0 and at most 10"),
    (["--scale", "nan"], "--scale nan is not a size in inches per image; use a number above 0 and at most 10"),
    (["--scale", "-1"], "--scale -1 is not a size in inches per image; use a number above 0 and at most 10"),
    (["--scale", "1e6"], "--scale 1e+06 is not a size in inches per image; use a number above 0 and at most 10"),
    (["--n", "1000000000"], "--n 1000000000 is more images than one grid shows (at most 200); use a smaller --n "
                            "and page through the split with --start"),
    (["--n", "200", "--ncols", "200", "--scale", "10"],
     "a grid of 1 x 200 images at --scale 10 would be 200000 x 1000 pixels (at most 50,000,000 pixels, "
     "under 65,536 a side); lower --scale, --n or --ncols"),
    (["--out", "g.xyz"], "--out g.xyz: unknown image format 'xyz'; end the file name in one of .png, .pdf, .svg, "),
])
def test_show_refuses_grids_it_cannot_draw_before_reading_data(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "show", "--data-dir", str(tmp_path / "no-data"), "--out", "g.png", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_show_into_a_file_where_a_folder_should_be_is_one_error(fashion_subset, tmp_path, capsys):
    (tmp_path / "notes").write_text("x")
    assert main(["data", "show", "--no-verify", "--data-dir", str(fashion_subset), "--out", str(tmp_path / "notes" / "g.png")]) == 2
    assert capsys.readouterr().err == (f"error: cannot use {tmp_path / 'notes'} as a folder: {tmp_path / 'notes'} "
                                       f"is a file; choose another output folder or move the file away\n")


def test_show_of_the_largest_grid_works(fashion_subset, tmp_path, capsys):
    out = tmp_path / "grid.pdf"
    assert main(["data", "show", "--no-verify", "--data-dir", str(fashion_subset), "--n", "200", "--ncols", "20", "--scale", "0.5",
                 "--out", str(out)]) == 0
    assert "200 test images" in capsys.readouterr().out and out.read_bytes()[:4] == b"%PDF"


def _with_test_labels(fashion_subset, folder, labels):
    """``folder`` holding the canonical files, except the test labels, which are ``labels``."""
    from cnnlab.data import write_idx

    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).symlink_to(fashion_subset / name)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    return folder / "t10k-labels-idx1-ubyte"


def _canonical_test_labels(fashion_subset):
    from cnnlab.data import read_idx

    return read_idx(fashion_subset / "t10k-labels-idx1-ubyte.gz")


@pytest.mark.parametrize("damage, message", [
    ({0: 200, 1: 255}, "holds 2 label(s) outside the classes 0..9 (values 200, 255); the file is damaged: "
                       "replace it"),
    ({5: -1}, "holds 1 label(s) outside the classes 0..9 (values -1); the file is damaged: replace it"),
])
def test_info_refuses_labels_outside_the_classes(fashion_subset, tmp_path, damage, message, capsys):
    labels = _canonical_test_labels(fashion_subset).astype(np.int8 if -1 in damage.values() else np.uint8)
    for i, value in damage.items():
        labels[i] = np.array(value).astype(labels.dtype)
    path = _with_test_labels(fashion_subset, tmp_path / "d", labels)
    assert main(["data", "info", "--no-verify", "--data-dir", str(path.parent)]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {path} {message}\n"
    assert out == ""  # nothing printed before the error: no half report


def test_float_labels_are_refused(fashion_subset, tmp_path, capsys):
    labels = _canonical_test_labels(fashion_subset).astype(np.float32)
    path = _with_test_labels(fashion_subset, tmp_path / "d", labels)
    assert main(["data", "info", "--no-verify", "--data-dir", str(path.parent)]) == 2
    assert capsys.readouterr().err == (f"error: {path} holds float32 labels, expected integer class numbers; "
                                       f"replace the file\n")


def test_loading_negative_labels_is_refused(fashion_subset, tmp_path):
    from cnnlab.data import load_split
    from cnnlab.errors import DataError

    labels = _canonical_test_labels(fashion_subset).astype(np.int8)
    labels[3] = -2
    path = _with_test_labels(fashion_subset, tmp_path / "d", labels)
    with pytest.raises(DataError, match=r"holds 1 label\(s\) outside the classes 0..9 \(values -2\)") as info:
        load_split("fashion-mnist", "test", path.parent, verify=False)
    assert str(info.value).startswith(str(path))
