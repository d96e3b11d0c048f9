"""Training on your own data (``--data``): image folders, .npz arrays and IDX folders, built here from the
committed MNIST / Fashion-MNIST subsets, checked against the IDX arrays and against Pillow itself."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.data.dataset import channel_stats, load_dataset, read_source
from cnnlab.data.idx import read_idx, write_idx
from cnnlab.data.split import stratified_split
from cnnlab.errors import DataError
from cnnlab.train.config import TrainConfig

FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


def subset(folder: Path, split: str, n: int | None = None):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return images[:n], labels[:n].astype(np.int64)


def write_tree(root: Path, splits: dict, names=None, suffix=".png", rgb=False, sizes=None) -> dict:
    """An image tree: root/<split>/<class>/<index>.png (or root/<class>/... for split None).
    Returns split -> list of (path, label) in the order cnnlab reads them (class, then file name)."""
    order = {}
    for split, (images, labels) in splits.items():
        rows = []
        for i, (image, label) in enumerate(zip(images, labels)):
            name = names[label] if names else str(label)
            folder = (root / split / name) if split else (root / name)
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(image)
            if rgb:
                img = img.convert("RGB")
            if sizes is not None:
                side = sizes[i % len(sizes)]
                img = img.resize((side, side), Image.Resampling.BICUBIC)
            path = folder / f"{i:05d}{suffix}"
            img.save(path, quality=95) if suffix == ".jpg" else img.save(path)
            rows.append((path, int(label)))
        order[split] = sorted(rows, key=lambda r: (names[r[1]] if names else str(r[1]), r[0].name))
    return order


@pytest.fixture
def mnist_tree(tmp_path, mnist_subset):
    splits = {"train": subset(mnist_subset, "train", 300), "test": subset(mnist_subset, "test", 100)}
    order = write_tree(tmp_path / "digits", splits)
    return tmp_path / "digits", splits, order


def test_png_tree_holds_the_idx_images_exactly(mnist_tree):
    root, splits, order = mnist_tree
    (root / "train" / "3" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "Thumbs.db").write_bytes(b"x")
    (root / "test" / "7" / "notes.txt").write_text("not an image")
    data = load_dataset(TrainConfig(data=str(root)), progress=False)
    assert data.source == "folder" and data.classes == [str(d) for d in range(10)]
    assert (data.channels, data.size) == (1, 28)
    assert data.skipped == {"hidden file or folder": 1, "not an image file": 2}
    for split, tensors in (("train", data.train), ("test", data.test)):
        images, labels = splits[split]
        expected = np.stack([images[int(p.stem)] for p, _ in order[split]])
        assert np.array_equal(tensors[0].numpy()[:, 0], expected)      # PNG is lossless: the very pixels
        assert tensors[1].tolist() == [label for _, label in order[split]]
    mean, std = channel_stats(data.train[0].numpy())
    x = data.train[0].double() / 255
    assert mean[0] == pytest.approx(x.mean().item(), abs=1e-9) and std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)
    assert data.stats == (mean, std)


def test_mixed_sizes_and_colour_convert_as_pillow_does(tmp_path, fashion_subset):
    images, labels = subset(fashion_subset, "train")
    picks = [np.flatnonzero(labels == c)[:6] for c in range(10)]     # 3 of each class per split
    train = np.concatenate([p[:3] for p in picks])
    test = np.concatenate([p[3:] for p in picks])
    rgb_order = write_tree(tmp_path / "rgb", {"train": (images[train], labels[train])}, names=FASHION_NAMES,
                           suffix=".jpg", rgb=True, sizes=[40, 28, 40])
    write_tree(tmp_path / "rgb", {"test": (images[test], labels[test])}, names=FASHION_NAMES, sizes=[40, 20, 20])
    result = read_source(tmp_path / "rgb", progress=False)
    # Most images are 40x40 and the JPEGs are RGB: the defaults are 40 pixels and 3 channels.
    assert (result["size"], result["channels"]) == (40, 3)
    assert result["found"]["sizes"] == {"40x40": 30, "20x20": 20, "28x28": 10}
    assert result["found"]["modes"] == {"L": 30, "RGB": 30}
    got = result["arrays"]["train_x"]
    for k, (path, _) in enumerate(rgb_order["train"]):
        expected = np.asarray(Image.open(path).convert("RGB").resize((40, 40), Image.Resampling.BILINEAR))
        assert np.array_equal(got[k].transpose(1, 2, 0), expected)
    small = read_source(tmp_path / "rgb", image_size=24, channels=1, progress=False)
    test_order = sorted((tmp_path / "rgb" / "test").rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    for k, path in enumerate(test_order):
        expected = np.asarray(Image.open(path).convert("L").resize((24, 24), Image.Resampling.BILINEAR))
        assert np.array_equal(small["arrays"]["test_x"][k, 0], expected)
    gray_of_rgb = np.asarray(Image.open(rgb_order["train"][0][0]).convert("L").resize((24, 24), Image.Resampling.BILINEAR))
    assert np.array_equal(small["arrays"]["train_x"][0, 0], gray_of_rgb)


def test_cache_is_reused_and_invalidated(mnist_tree, monkeypatch, isolated_cache):
    import cnnlab.data.folder as folder

    root, _, order = mnist_tree
    first = read_source(root, progress=False)
    assert first["cache"] == "written"
    cached = list((isolated_cache / "cnnlab" / "images").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"
    assert not [p for p in cached[0].parent.iterdir() if p.name.startswith(".")]   # no temp file left

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the data")

    with monkeypatch.context() as patched:
        patched.setattr(folder, "decode", no_decoding)
        second = read_source(root, progress=False)
    assert second["cache"] == "hit"
    for key in first["arrays"]:
        assert np.array_equal(first["arrays"][key], second["arrays"][key])
    # A file touched, a file added: decoded afresh, replacing the stale entry; other settings: a second entry.
    path = order["train"][0][0]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_source(root, progress=False)["cache"] == "written"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "train" / "5" / "extra.png")
    grown = read_source(root, progress=False)
    assert grown["cache"] == "written" and len(grown["arrays"]["train_y"]) == 301
    assert read_source(root, image_size=32, progress=False)["cache"] == "written"
    assert read_source(root, progress=False)["cache"] == "hit"
    assert len(list((isolated_cache / "cnnlab" / "images").glob("*.npz"))) == 2


def test_npz_in_keras_layout(tmp_path, mnist_subset):
    (xtr, ytr), (xte, yte) = subset(mnist_subset, "train", 500), subset(mnist_subset, "test", 200)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    data = load_dataset(TrainConfig(data=str(tmp_path / "mnist.npz")), progress=False)
    assert data.source == "npz" and data.classes == [str(d) for d in range(10)] and (data.channels, data.size) == (1, 28)
    assert np.array_equal(data.train[0].numpy()[:, 0], xtr) and data.test[1].tolist() == yte.tolist()
    # Float images in [0, 1], (N, H, W, C), and class names in the archive.
    np.savez(tmp_path / "float.npz", x_train=(xtr / 255.0)[..., None], y_train=ytr.astype(np.uint8),
             classes=np.array([f"digit {d}" for d in range(10)]))
    floats = load_dataset(TrainConfig(data=str(tmp_path / "float.npz"), val_fraction=0.2), progress=False)
    assert floats.classes[3] == "digit 3" and floats.test is None
    assert np.array_equal(np.sort(torch.cat([floats.train[1], floats.val[1]]).numpy()), np.sort(ytr))
    # Colour at another size goes through Pillow's resize.
    colour = read_source(tmp_path / "mnist.npz", image_size=32, channels=3)
    expected = np.asarray(Image.fromarray(xte[5]).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(colour["arrays"]["test_x"][5].transpose(1, 2, 0), expected)


def test_idx_folder_in_mnist_naming(tmp_path, mnist_subset):
    import shutil

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_subset / name, tmp_path / f"kmnist-{name}")
    data = load_dataset(TrainConfig(data=str(tmp_path)), progress=False)
    assert data.source == "idx" and len(data.train[1]) == 2000 and len(data.test[1]) == 1000
    assert np.array_equal(data.train[0].numpy()[:, 0], subset(mnist_subset, "train")[0])


def test_validation_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 20, 3])
    train, val = stratified_split(labels, 0.1, seed=7)
    assert np.bincount(labels[val]).tolist() == [10, 5, 2, 1]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    again_train, again_val = stratified_split(labels, 0.1, seed=7)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=8)[1])


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_on_a_folder_with_validation(mnist_tree, tmp_path, capsys):
    root, _, _ = mnist_tree
    code, out, err = run_cli(capsys, "train", "--data", str(root), "--epochs", "2", "--val-fraction", "0.2",
                             "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert re.search(r"epoch 2/2: train loss [\d.]+, train acc [\d.]+, val acc [\d.]+", out)
    assert re.search(r"loss [\d.]+, train acc [\d.]+, val acc [\d.]+, test acc [\d.]+", out)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["val_acc"] <= 1 and 0 <= summary["test_acc"] <= 1
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_acc,test_acc,val_acc"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["classes"] == [str(d) for d in range(10)] and ckpt["in_channels"] == 1
    assert len(ckpt["normalize"][0]) == 1
    # evaluate and predict use the run's own data and class names.
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "run"))
    assert code == 0, err
    assert "test (100 images)" in out
    image = next((root / "test" / "4").iterdir())
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "run"), str(image), "--top-k", "2")
    assert code == 0, err
    assert out.startswith(str(image))


def test_folder_without_test_split_reports_validation_only(tmp_path, mnist_subset, capsys):
    images, labels = subset(mnist_subset, "train", 200)
    write_tree(tmp_path / "flat", {None: (images, labels)})
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "flat"), "--epochs", "1",
                             "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert "has no test split: holding out 0.1 of the training data for validation" in err
    assert "val acc" in out and "test acc" not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] is None
    # evaluate and predict --index then score the validation split, as the run reported it.
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "run"))
    assert code == 0, err
    assert "val (20 images)" in out
    # The table's "all" row; the run measured itself in its own precision (bf16 on a CPU with bf16
    # units), evaluate in fp32: one image of the 20 may differ.
    assert float(out.splitlines()[-2].split()[1]) == pytest.approx(summary["val_acc"], abs=1 / 20 + 1e-3)
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "run"), "--index", "0")
    assert code == 0, err
    assert out.startswith("val[0] (true: ")
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "run"), "--split", "test")
    assert code == 2 and "has no test split" in err


@pytest.mark.parametrize("channels,size,kernel", [(3, 28, False), (1, 30, False), (1, 28, True)])
def test_lenet_kernel_only_for_gray_28_pixels(mnist_tree, channels, size, kernel):
    from cnnlab.train.run import build_trainer
    from cnnlab.kernels.lenet.kernel import unsupported_reason

    root, _, _ = mnist_tree
    config = TrainConfig(data=str(root), channels=channels, image_size=size, epochs=1, kernel="on").validate()
    trainer = build_trainer(config, torch.device("cpu"))
    model = trainer.model
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == channels
    assert ("kernel=lenet" in trainer.step.reason) is kernel
    if not kernel:
        assert "kernel unavailable" in trainer.step.reason
        X, _ = next(iter(trainer.train_batches))
        assert X.shape[1:] == (channels, size, size) and model(X).shape == (X.shape[0], 10)
    else:
        assert unsupported_reason(model) is None


def test_png_tree_trains_as_well_as_the_idx_files(tmp_path, fashion_subset):
    from cnnlab.train import train

    splits = {"train": subset(fashion_subset, "train"), "test": subset(fashion_subset, "test")}
    write_tree(tmp_path / "fashion", splits, names=FASHION_NAMES)
    settings = dict(model="lenet", model_options={"activation": "relu"}, optimizer="adamw", lr=0.003,
                    batch_size=64, epochs=4, init="default")
    from_png = train(TrainConfig(data=str(tmp_path / "fashion"), **settings), progress=False)
    from_idx = train(TrainConfig(data=str(fashion_subset), **settings), progress=False)
    assert from_png["test_acc"] > 0.65 and from_idx["test_acc"] > 0.65     # far above chance (0.1)
    # The same images in another order (class folders, not the IDX order): other batches, so a band, not equality.
    assert abs(from_png["test_acc"] - from_idx["test_acc"]) < 0.06


def test_a_run_on_its_own_data_resumes_from_the_data_s_new_place(tmp_path, mnist_subset, capsys):
    """Own data that moved: resuming names the missing place and the fix (--data-dir, as for a registry run),
    which then works and is recorded; data that changed is named, not blamed on the checkpoint."""
    images, labels = subset(mnist_subset, "train", 60)
    write_tree(tmp_path / "old", {None: (images, labels)})
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "old"), "--epochs", "1", "--run-dir", str(run),
                             "--no-progress", "--device", "cpu")
    assert code == 0, err
    (tmp_path / "old").rename(tmp_path / "new")
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert f"the run's data {tmp_path / 'old'} is not there any more" in err
    assert f"--resume {run} --data-dir PATH" in err
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--data", str(tmp_path / "new"))
    assert code == 2 and "--data-dir" in err, err
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "2", "--no-progress",
                             "--data-dir", str(tmp_path / "new"))
    assert code == 0, err
    assert "epoch 2/2" in out
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["config"]["data"] == str(tmp_path / "new") and config["data"]["location"] == str(tmp_path / "new")
    # The same place, other data: three of the ten classes left.
    keep = labels < 3
    write_tree(tmp_path / "three", {None: (images[keep], labels[keep])})
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "3", "--no-progress",
                             "--data-dir", str(tmp_path / "three"))
    assert code == 2 and err.count("\n") == 1, err
    assert f"the data in {tmp_path / 'three'} is not what {run} trained on: classes" in err
    assert "checkpoint" not in err.split(";")[0] and "damaged" not in err


def test_data_info_and_show(mnist_tree, tmp_path, capsys):
    root, _, _ = mnist_tree
    (root / "train" / "1" / "readme.txt").write_text("x")
    code, out, err = run_cli(capsys, "data", "info", "--data", str(root))
    assert code == 0, err
    assert "classes:  10: 0, 1, 2" in out and "converted to 1x28x28" in out
    assert "sizes 28x28 (400); modes L (400)" in out and "1 not an image file" in out
    assert re.search(r"^train: 300 examples", out, re.M) and re.search(r"^test: 100 examples", out, re.M)
    assert "imbalance: largest class" in out and "normalisation (train): mean 0.1" in out
    code, out, err = run_cli(capsys, "data", "show", "--data", str(root), "--n", "6", "--out", str(tmp_path / "g.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size[0] > 100


def test_a_class_folder_named_in_bytes_that_are_not_utf8_trains_and_shows_under_a_readable_name(tmp_path, capsys):
    """A folder named b"\\xff\\xfe" (another encoding's name; Linux allows any bytes) is read through its own
    name and recorded and shown as the text ``\\xff\\xfe``, which plots, files and consoles can write."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for name in (b"\xff\xfe", b"cat"):
        for split in (b"train", b"test"):
            folder = os.path.join(os.fsencode(root), split, name)
            os.makedirs(folder)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                    os.fsdecode(os.path.join(folder, b"%d.png" % i)))
    code, out, err = run_cli(capsys, "data", "info", "--data", str(root))
    assert code == 0, err
    assert "classes:  2: cat, \\xff\\xfe" in out
    code, out, err = run_cli(capsys, "data", "show", "--data", str(root), "--n", "8", "--out", str(tmp_path / "g.png"))
    assert code == 0, err
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", str(root), "--epochs", "1", "--run-dir", str(run),
                             "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["classes"] == ["cat", "\\xff\\xfe"]
    for argv in (["evaluate", str(run)], ["inspect", str(run), "--out-dir", str(tmp_path / "inspect")]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, err


def test_summary_sizes_the_network_for_the_data(tmp_path, mnist_subset, capsys):
    images, labels = subset(mnist_subset, "train", 40)
    write_tree(tmp_path / "rgb", {None: (images, labels % 3)}, names=("a", "b", "c"), rgb=True, sizes=[32])
    code, out, err = run_cli(capsys, "summary", "--data", str(tmp_path / "rgb"))
    assert code == 0, err
    assert "3 channel(s), 3 classes, 32x32 images" in out
    assert re.search(r"Conv2d output shape:\s+torch.Size\(\[1, 6, 32, 32\]\)", out)
    assert re.search(r"Linear output shape:\s+torch.Size\(\[1, 3\]\)\n", out)


# ---------------------------------------------------------------- bad input: one line each


def one_line_error(capsys, *argv) -> str:
    code = main(["data", "info", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_empty_folder_class_without_images_and_single_class(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "is empty" in one_line_error(capsys, "--data", str(tmp_path / "empty"))
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "classes" / "cat" / "a.png")
    (tmp_path / "classes" / "dog" / "notes.txt").write_text("x")
    err = one_line_error(capsys, "--data", str(tmp_path / "classes"))
    assert f"class folder {tmp_path / 'classes' / 'dog'} holds no images" in err
    (tmp_path / "classes" / "dog" / "notes.txt").unlink()
    (tmp_path / "classes" / "dog").rmdir()
    assert "has a single class ('cat')" in one_line_error(capsys, "--data", str(tmp_path / "classes"))
    assert "does not exist" in one_line_error(capsys, "--data", str(tmp_path / "nowhere"))


def test_corrupt_image_is_named_or_skipped(mnist_tree, capsys):
    root, _, _ = mnist_tree
    bad = root / "train" / "2" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    err = one_line_error(capsys, "--data", str(root))
    assert str(bad) in err and "--skip-bad-images" in err
    assert main(["data", "info", "--data", str(root), "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable or corrupt image" in out and re.search(r"^train: 300 examples", out, re.M)


def test_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / "bomb" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "bomb" / name / "small.png")
    Image.new("L", (200, 200)).save(tmp_path / "bomb" / "b" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)   # 200x200 is then a bomb
    err = one_line_error(capsys, "--data", str(tmp_path / "bomb"))
    assert "huge.png is too large to read safely (40,000 pixels" in err


def test_train_and_test_with_different_classes(tmp_path, capsys):
    for split, names in (("train", ("cat", "dog")), ("test", ("cat", "fox"))):
        for name in names:
            (tmp_path / "d" / split / name).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "d" / split / name / "1.png")
    err = one_line_error(capsys, "--data", str(tmp_path / "d"))
    assert "different classes (only in train/: dog; only in test/: fox)" in err


def test_bad_npz_files(tmp_path, capsys):
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "range.npz", x_train=x, y_train=np.array([0, 1, 2, 5]), classes=np.array(["a", "b", "c"]))
    assert "labels go up to 5, beyond the 3 classes" in one_line_error(capsys, "--data", str(tmp_path / "range.npz"))
    np.savez(tmp_path / "neg.npz", x_train=x, y_train=np.array([0, 1, -1, 1]))
    assert "negative labels" in one_line_error(capsys, "--data", str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "shape.npz", x_train=x, y_train=np.zeros((4, 2), np.int64))
    assert "y_train has shape (4, 2)" in one_line_error(capsys, "--data", str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "pickled.npz", x_train=x, y_train=np.array([{"label": 1}] * 4, dtype=object))
    assert "holds Python objects (a pickle)" in one_line_error(capsys, "--data", str(tmp_path / "pickled.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a .npz archive" in one_line_error(capsys, "--data", str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "floats.npz", x_train=x + 2.0, y_train=np.array([0, 1, 0, 1]))
    assert "float pixels outside [0, 1]" in one_line_error(capsys, "--data", str(tmp_path / "floats.npz"))


def test_a_label_far_beyond_the_data_is_refused_not_made_a_class_count(tmp_path, capsys):
    """Without class names the largest label sets the class count: one stray label of 10^12 in 4 images
    would ask for 10^12 classes.  Up to 1,000 classes (or as many as there are images) are taken as given."""
    x = np.zeros((4, 8, 8), np.uint8)
    for label in (5_000_000, 10**12):
        np.savez(tmp_path / "stray.npz", x_train=x, y_train=np.array([0, 1, label, 1]))
        err = one_line_error(capsys, "--data", str(tmp_path / "stray.npz"))
        assert f"stray.npz: y_train holds label {label:,d} (image 2)" in err and "fix that label" in err
    np.savez(tmp_path / "many.npz", x_train=x, y_train=np.array([0, 1, 999, 1]))
    assert main(["data", "info", "--data", str(tmp_path / "many.npz")]) == 0
    assert "classes:  1000: 0, 1, 2," in capsys.readouterr().out
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", x)
    for label in (3_000_000, 2**31 - 1):
        write_idx(idx / "train-labels-idx1-ubyte", np.array([label, 0, 1, 1], dtype=np.int32))
        err = one_line_error(capsys, "--data", str(idx))
        assert f"{idx / 'train-labels-idx1-ubyte'} holds label {label:,d} (image 0)" in err


def npz_bytes(members: dict[str, bytes]) -> bytes:
    """A .npz archive of raw .npy members (stored), as numpy.savez writes it, so that they can be crafted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, shape=None) -> bytes:
    """``array`` as a .npy file, its header declaring ``shape`` where given."""
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    np.lib.format.write_array_header_1_0(buffer, {**header, "shape": shape or array.shape})
    return buffer.getvalue() + array.tobytes()


def test_npz_members_that_are_damaged_crafted_or_not_utf8_are_one_line_each(tmp_path, capsys, monkeypatch):
    """A header declaring 1.4 TiB, a truncated member and a pickle are told apart from their headers, before
    NumPy allocates or unpickles anything; class names in bytes that are not UTF-8 are shown as text."""
    x, y = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1])
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda *a: pytest.fail("read the array"))
    (tmp_path / "huge.npz").write_bytes(npz_bytes({"x_train": npy_bytes(x, (10**6, 1000, 1540)),
                                                   "y_train": npy_bytes(y)}))
    err = one_line_error(capsys, "--data", str(tmp_path / "huge.npz"))
    assert "huge.npz: x_train declares shape (1000000, 1000, 1540) of uint8 (1,540,000,000,000 bytes) but holds " \
           "256 bytes; the file is truncated: save it again" in err
    (tmp_path / "short.npz").write_bytes(npz_bytes({"x_train": npy_bytes(x)[:-100], "y_train": npy_bytes(y)}))
    assert "short.npz: x_train declares shape (4, 8, 8) of uint8 (256 bytes) but holds 156 bytes; the file is " \
           "truncated" in one_line_error(capsys, "--data", str(tmp_path / "short.npz"))
    monkeypatch.undo()
    np.savez(tmp_path / "pickled.npz", x_train=x, y_train=np.array([{"label": 1}] * 4, dtype=object))
    assert "y_train holds Python objects (a pickle)" in one_line_error(capsys, "--data", str(tmp_path / "pickled.npz"))
    np.savez(tmp_path / "names.npz", x_train=x, y_train=y, classes=np.array([b"caf\xe9", b"dog"]))
    assert main(["data", "info", "--data", str(tmp_path / "names.npz")]) == 0
    assert "classes:  2: caf\\xe9, dog" in capsys.readouterr().out


def test_images_nested_too_deep_and_float_pictures_with_nan_are_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "deep"
    (root / "b").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "b" / "1.png")
    # 1,100 nested folders overflowed Python's recursion limit of 1,000 frames; 240 do as much under 250.
    os.makedirs(os.path.join(root, "a", *["d"] * 240))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)
    try:
        err = one_line_error(capsys, "--data", str(root))
    finally:
        sys.setrecursionlimit(limit)
    assert "lies more than 100 folders deep" in err and str(root / "a" / "d") in err
    root = tmp_path / "floats"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(root / name / "1.tif")
    assert main(["data", "info", "--data", str(root)]) == 0
    capsys.readouterr()
    for bad in (np.nan, np.inf):
        pixels = np.full((8, 8), 0.5, np.float32)
        pixels[2, 3] = bad
        Image.fromarray(pixels, mode="F").save(root / "b" / "2.tif")
        err = one_line_error(capsys, "--data", str(root))
        assert f"image {root / 'b' / '2.tif'} holds NaN or infinite pixel values" in err


def test_symlink_loop_is_refused(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "loop" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "loop" / name / "1.png")
    os.symlink(tmp_path / "loop" / "a", tmp_path / "loop" / "a" / "again")
    err = one_line_error(capsys, "--data", str(tmp_path / "loop"))
    assert "symbolic link loop" in err and str(tmp_path / "loop" / "a" / "again") in err


def test_links_are_followed_and_broken_links_and_special_files_are_counted(tmp_path):
    rng = np.random.default_rng(0)
    pictures = {}
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(2):
            pictures[name, i] = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pictures[name, i]).save(tmp_path / "src" / name / f"{i}.png")
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    os.symlink(tmp_path / "src" / "a" / "0.png", root / "a" / "0.png")      # a linked file
    os.symlink(tmp_path / "src" / "a" / "1.png", root / "a" / "more.png")
    os.symlink(tmp_path / "src" / "b", root / "b")                          # a linked class folder
    os.symlink(tmp_path / "gone.png", root / "a" / "gone.png")              # a broken link
    os.mkfifo(root / "a" / "pipe.png")                                      # not a regular file
    data = load_dataset(TrainConfig(data=str(root)), progress=False)
    assert data.classes == ["a", "b"]
    assert data.skipped == {"broken link or special file": 2}
    held = [data.train, data.val]  # no test split: a part of the four is held out for validation
    labels = sorted(int(y) for _, ys in held for y in ys)
    assert labels == [0, 0, 1, 1]
    got = sorted(x.numpy()[0].tobytes() for xs, _ in held for x in xs)
    assert got == sorted(picture.tobytes() for picture in pictures.values())


def test_folder_too_large_for_memory_is_refused_before_decoding(mnist_tree, capsys, monkeypatch):
    import cnnlab.data.decode as decode

    root, _, _ = mnist_tree
    monkeypatch.setattr(decode, "available_memory", lambda: 2**20)        # 1 MiB free
    monkeypatch.setattr(decode, "decode_chunk", lambda task: pytest.fail("decoded"))
    err = one_line_error(capsys, "--data", str(root), "--image-size", "64", "--channels", "3")
    assert "400 images at 3x64x64 need 0.0 GiB" in err or "400 images at 3x64x64 need" in err
    assert "--image-size" in err


def test_a_size_taken_from_the_data_is_held_to_the_limit_every_command_takes(tmp_path, capsys, monkeypatch,
                                                                             fashion_subset):
    """--image-size stops at 1,024 pixels, and so does a size taken from the images: 1,100-pixel PNGs would
    train a network whose checkpoint every later command refuses.  The .npz and registry sources meet the
    same limit and the same memory check as image folders, before anything is converted."""
    import cnnlab.data.dataset as dataset
    import cnnlab.data.decode as decode

    for name in ("a", "b"):
        (tmp_path / "big" / name).mkdir(parents=True)
        Image.new("L", (1100, 1100)).save(tmp_path / "big" / name / "1.png")
    monkeypatch.setattr(decode, "decode_chunk", lambda task: pytest.fail("decoded"))
    err = one_line_error(capsys, "--data", str(tmp_path / "big"))
    assert f"{tmp_path / 'big'}: its images are 1,100 pixels on a side, more than the 1,024 a run takes" in err
    np.savez(tmp_path / "wide.npz", x_train=np.zeros((4, 1, 20000), np.uint8), y_train=np.array([0, 1, 0, 1]))
    monkeypatch.setattr(dataset, "as_images", lambda *a: pytest.fail("converted"))
    err = one_line_error(capsys, "--data", str(tmp_path / "wide.npz"))
    assert "wide.npz: its images are 20,000 pixels on a side" in err and "--image-size 1024 or less" in err
    monkeypatch.setattr(decode, "available_memory", lambda: 2**20)        # 1 MiB free
    np.savez(tmp_path / "small.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1]))
    err = one_line_error(capsys, "--data", str(tmp_path / "small.npz"), "--image-size", "1024")
    assert "small.npz: 4 images at 1x1024x1024 need" in err and "half the 0.0 GiB of free memory" in err
    with pytest.raises(DataError, match=r"^fashion-mnist: 3,000 images at 3x64x64 need .* of free memory"):
        load_dataset(TrainConfig(data_dir=str(fashion_subset), verify=False, image_size=64, channels=3), progress=False)


def test_bad_settings_are_refused_before_any_work(mnist_tree, capsys):
    root, _, _ = mnist_tree
    for flags, words in ((["--val-fraction", "1"], "validation fraction"), (["--image-size", "0"], "image size"),
                         (["--val-fraction", "nan"], "validation fraction")):
        code = main(["train", "--data", str(root), *flags])
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1, err


def test_a_registry_run_converted_to_colour_is_scored_on_the_images_it_trained_on(tmp_path, fashion_subset, capsys):
    """``--channels 3 --image-size 32`` on Fashion-MNIST: evaluate reads the test split through the same
    conversion, so it gives the run's own closing test accuracy, and export takes 3 x 32 x 32 images."""
    run_dir = tmp_path / "run"
    assert main(["train", "--data-dir", str(fashion_subset.parent), "--no-verify", "--channels", "3",
                 "--image-size", "32", "--model", "lenet_bn", "--lr", "0.3", "--batch-size", "64", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]) == 0
    test_acc = json.loads((run_dir / "summary.json").read_text())["test_acc"]
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr().out
    correct = int(re.search(r"^all\s+\S+\s+(\d+) / 1000$", printed, re.M).group(1))
    assert correct / 1000 == pytest.approx(test_acc, abs=1e-9) and test_acc > 0.4, printed   # 0.661 measured
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 0
    assert "top-1 agrees on 1000/1000" in capsys.readouterr().out
    extra = {"cnnlab.json": ""}
    torch.jit.load(str(run_dir / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["cnnlab.json"])["input"]["shape"] == ["batch", 3, 32, 32]


def _png_variants(tmp_path, mnist_subset):
    """PNG files of real digits in the forms image folders hold: what plain_png must read exactly as Pillow
    does, and what it must leave to Pillow."""
    images, _ = subset(mnist_subset, "train", 4)
    gray = Image.fromarray(images[0])
    rgb = Image.merge("RGB", [Image.fromarray(images[i]) for i in range(3)])
    files = {}

    def save(name, img, **kw):
        files[name] = tmp_path / f"{name}.png"
        img.save(files[name], **kw)

    save("gray", gray)
    save("gray_text", gray, pnginfo=_text_info())
    save("rgb", rgb)
    save("gray_trns", gray, transparency=0)                    # a transparent gray value: Pillow's mode changes
    save("palette", rgb.convert("P"))
    save("rgba", rgb.convert("RGBA"))
    save("gray16", Image.fromarray(images[0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6                                            # orientation: rotate 90 degrees
    save("exif_rotated", gray, exif=exif)
    from PIL import PngImagePlugin

    xmp = PngImagePlugin.PngInfo()                             # the same orientation, as XMP in a text chunk
    xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
                 '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff='
                 '"http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    save("xmp_rotated", gray, pnginfo=xmp)
    save("other_size", gray.resize((20, 20)))
    damaged = bytearray(files["gray"].read_bytes())
    damaged[60] ^= 0xFF                                         # inside the first IDAT chunk: its CRC fails
    files["damaged"] = tmp_path / "damaged.png"
    files["damaged"].write_bytes(bytes(damaged))
    interlaced = bytearray(files["gray"].read_bytes())         # the header says Adam7 (CRC made right)
    interlaced[28] = 1
    interlaced[29:33] = zlib.crc32(bytes(interlaced[12:29])).to_bytes(4, "big")
    files["interlaced"] = tmp_path / "interlaced.png"
    files["interlaced"].write_bytes(bytes(interlaced))
    return files


def _text_info():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a digit")
    return info


def test_plain_pngs_are_read_as_pillow_reads_them_and_others_are_left_to_pillow(tmp_path, mnist_subset):
    pytest.importorskip("pyspng", reason="pyspng (the fast-png extra) is not installed")
    from cnnlab.data.decode import convert, plain_png
    from cnnlab.images import open_image

    files = _png_variants(tmp_path, mnist_subset)
    taken = {"gray": 1, "gray_text": 1, "rgb": 3}
    for name, path in files.items():
        for channels in (1, 3):
            got = plain_png(str(path), channels, 28)
            if taken.get(name) == channels:
                assert got is not None, name
                with Image.open(path) as img:
                    assert np.array_equal(got[0], convert(open_image(path), channels, 28)), name
                    assert got[1] == ((28, 28), img.mode, channels == 3)
            else:
                assert got is None, (name, channels)
    # Pillow itself refuses the damaged file (its CRC fails): one line naming it and what to give instead
    with pytest.raises(DataError, match=rf"^{re.escape(str(files['damaged']))} is not an image Pillow can read "
                                        r"\(\w+Error: .+\); give a PNG, JPEG, BMP, GIF, TIFF or WebP file$"):
        open_image(files["damaged"])


def test_a_folder_of_every_png_form_decodes_as_pillow_alone_does(tmp_path, mnist_subset, monkeypatch):
    """The same tree decoded with and without the libspng path gives the same arrays and the same survey."""
    import cnnlab.data.decode as decode

    (tmp_path / "loose").mkdir()
    files = _png_variants(tmp_path / "loose", mnist_subset)
    files.pop("damaged"), files.pop("interlaced")      # not images Pillow reads: see the test above
    for i, (name, path) in enumerate(sorted(files.items())):
        target = tmp_path / "tree" / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(decode, "pyspng", None)
        for channels in (1, 3):
            read = read_source(tmp_path / "tree", channels=channels, image_size=28, progress=False)
            assert read["cache"] == "written"     # decoded now, not read from the cache
            results.append((fast, channels, read["arrays"]["train_x"], read["found"]))
        for path in Path(os.environ["XDG_CACHE_HOME"]).rglob("*.npz"):
            path.unlink()
    for (_, channels, fast_x, fast_found), (_, _, slow_x, slow_found) in zip(results[:2], results[2:]):
        assert np.array_equal(fast_x, slow_x), channels
        assert fast_found == slow_found


def test_without_pyspng_installed_a_folder_decodes_as_pillow_reads_it(tmp_path):
    """pyspng is an optional extra (it has no wheels for some systems): in a Python where importing it
    fails, cnnlab imports, reads a folder of plain PNG files with Pillow and gives the arrays Pillow
    gives."""
    import subprocess
    import sys

    from conftest import colour_folder

    expected = colour_folder(tmp_path / "tree", n_train=40, n_test=20, side=28)
    script = ("import sys; sys.modules['pyspng'] = None\n"     # what `import pyspng` does where it is missing
              "import numpy as np\n"
              "from cnnlab.data import decode\n"
              "from cnnlab.data.dataset import read_source\n"
              "assert decode.pyspng is None\n"
              f"read = read_source({str(tmp_path / 'tree')!r}, progress=False)\n"
              f"np.savez({str(tmp_path / 'read.npz')!r}, **read['arrays'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    read = np.load(tmp_path / "read.npz")
    assert np.array_equal(read["train_x"], expected["train"]) and np.array_equal(read["test_x"], expected["test"])
