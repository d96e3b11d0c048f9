"""CIFAR-10's python batches, read without unpickling.  The real tarball cannot be fetched here, so the
tests write batch files of the same layout: byte for byte as Python 2's cPickle (protocol 2) wrote the
official ones, and as Python 3's pickle writes NumPy arrays, and check the pixels and labels read back;
a file that names anything else (a hostile pickle) is refused without running it.  As the registry dataset
``cifar10``, a tarball of that format is served from 127.0.0.1 and found, verified, downloaded and trained on."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import cnnlab.data.cifar as cifar
import cnnlab.data.sources as sources
from cnnlab.data import registry
from cnnlab.cli.main import main
from cnnlab.data.dataset import load_dataset
from cnnlab.errors import DataError
from cnnlab.train.config import TrainConfig


def _string(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle.dump(d, f, 2) writes {'batch_label', 'labels', 'data', 'filenames'}."""
    n = data.shape[0]
    out = bytearray(b"\x80\x02}q\x01(")                                   # PROTO 2, EMPTY_DICT, BINPUT, MARK
    out += _string(b"batch_label") + _string(b"training batch 1 of 5")
    out += _string(b"labels") + b"]q\x02(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += _string(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85" + _string(b"b") + b"\x87Rq\x05"
    out += b"(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"            # state: 1, (n, 3072)
    out += b"cnumpy\ndtype\nq\x06" + _string(b"u1") + b"K\x00K\x01\x87Rq\x07"
    out += b"(K\x03" + _string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + _string(data.tobytes()) + b"tb"                       # False, the raw bytes; BUILD
    out += _string(b"filenames") + b"]q\x08(" + b"".join(_string(f"img_{i}.png".encode()) for i in range(n)) + b"e"
    out += b"u."
    return bytes(out)


def python3_batch(data: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data}, protocol=2)


def make_batches(rng, per_batch=4):
    batches = {}
    for name in cifar.TRAIN_BATCHES + (cifar.TEST_BATCH,):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batches[name] = (data, [int(v) for v in rng.integers(0, 10, per_batch)])
    return batches


def expected_images(data: np.ndarray) -> np.ndarray:
    """Pixel (r, s) of channel c of image k is data[k, 1024 c + 32 r + s] (the dataset's documented layout)."""
    out = np.empty((data.shape[0], 3, 32, 32), np.uint8)
    for k in range(data.shape[0]):
        for c in range(3):
            out[k, c] = data[k, 1024 * c:1024 * (c + 1)].reshape(32, 32)
    return out


@pytest.fixture
def published(monkeypatch):
    """Point the published md5s at the files a test writes."""
    def publish(files: dict[str, bytes]):
        monkeypatch.setattr(cifar, "BATCH_MD5", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})
    return publish


def test_python2_layout_folder_is_read_exactly(tmp_path, published):
    batches = make_batches(np.random.default_rng(1))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    files = {name: python2_batch(*batch) for name, batch in batches.items()}
    for name, data in files.items():
        assert pickle.loads(data, encoding="bytes")[b"labels"] == batches[name][1]   # the writer is a real pickle
        (folder / name).write_bytes(data)
    published(files)
    data = load_dataset(TrainConfig(data=str(tmp_path)), progress=False)
    assert data.source == "cifar" and data.classes == list(cifar.CLASSES) and (data.channels, data.size) == (3, 32)
    train = np.concatenate([batches[n][0] for n in cifar.TRAIN_BATCHES])
    assert np.array_equal(data.train[0].numpy(), expected_images(train))
    assert data.train[1].tolist() == sum((batches[n][1] for n in cifar.TRAIN_BATCHES), [])
    assert np.array_equal(data.test[0].numpy(), expected_images(batches["test_batch"][0]))


def test_python3_pickles_in_a_tarball(tmp_path, published):
    batches = make_batches(np.random.default_rng(2))
    files = {name: python3_batch(*batch) for name, batch in batches.items()}
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    published(files)
    data = load_dataset(TrainConfig(data=str(tarball)), progress=False)
    assert np.array_equal(data.test[0].numpy(), expected_images(batches["test_batch"][0]))
    assert data.test[1].tolist() == batches["test_batch"][1]


def test_files_that_are_not_the_official_ones_are_refused(tmp_path, capsys):
    batches = make_batches(np.random.default_rng(3))
    for name, batch in batches.items():
        (tmp_path / name).write_bytes(python2_batch(*batch))
    assert main(["data", "info", "--data", str(tmp_path)]) == 2       # md5s of the real files
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data_batch_1 is not the official file" in err and "--no-verify" in err
    assert main(["data", "info", "--data", str(tmp_path), "--no-verify"]) == 0
    assert "train: 20 examples" in capsys.readouterr().out


class Hostile:
    def __reduce__(self):
        return (os.system, ("touch hacked",))


def test_a_hostile_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps({"data": Hostile(), "labels": [0]}, protocol=2)
    with pytest.raises(DataError, match=r"refers to (posix|os)\.system, which a CIFAR-10 batch does not"):
        cifar.parse_batch(data, "evil")
    assert not (tmp_path / "hacked").exists()
    with pytest.raises(DataError, match="is not a CIFAR-10 python batch"):
        cifar.parse_batch(python2_batch(np.zeros((2, 3072), np.uint8), [1, 2])[:-40], "short")


def test_a_batch_larger_than_any_cifar_batch_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    """A tar member declaring 3 GB (a few KB of gzip can hold that many zeros) is refused from its header;
    a batch file in a folder, from its size on disk."""
    huge = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    huge.size = 3 * 10**9
    tarball = tmp_path / "huge.tar.gz"
    tarball.write_bytes(gzip.compress(huge.tobuf()))   # the header alone: nothing behind it is read
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda *a: pytest.fail("read a member"))
    assert main(["data", "info", "--data", str(tarball), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{tarball}: cifar-10-batches-py/data_batch_1 is 3,000,000,000 bytes, more than a CIFAR-10 batch" in err
    batches = make_batches(np.random.default_rng(4))
    for name, batch in batches.items():
        (tmp_path / "folder" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "folder" / name).write_bytes(python2_batch(*batch))
    with open(tmp_path / "folder" / "test_batch", "r+b") as f:
        f.truncate(cifar.MAX_BATCH_BYTES + 1)   # sparse: no disk used
    monkeypatch.setattr(Path, "read_bytes", lambda *a: pytest.fail("read a batch file"))
    assert main(["data", "info", "--data", str(tmp_path / "folder"), "--no-verify"]) == 2
    assert "test_batch is 62,488,577 bytes, more than a CIFAR-10 batch" in capsys.readouterr().err


@pytest.mark.parametrize("n,shape", [(1, b"J\xff\xff\xff\xffJ" + struct.pack("<i", -3072) + b"\x86"),  # (-1, -3072)
                                     (0, (b"\x8a\x06" + (2**40).to_bytes(6, "little")) * 3 + b"\x87")])  # (2^40,)*3
def test_a_crafted_data_shape_is_one_line_even_unverified(tmp_path, capsys, n, shape):
    """Shapes whose product is the data's length only by overflow or signs were a reshape's traceback."""
    batches = make_batches(np.random.default_rng(5))
    for name, batch in batches.items():
        (tmp_path / name).write_bytes(python2_batch(*batch))
    crafted = python2_batch(np.zeros((n, 3072), np.uint8), [0] * n)
    plain = b"M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
    assert plain in crafted
    (tmp_path / "data_batch_1").write_bytes(crafted.replace(plain, shape))
    assert main(["data", "info", "--data", str(tmp_path), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}: data_batch_1" in err, err


# ---- CIFAR-10 as a registry dataset (--dataset cifar10)
#
# The real cifar-10-python.tar.gz cannot be downloaded here.  These tests write a tarball of the same
# format (the batch files as Python 2's cPickle wrote them, under cifar-10-batches-py/), point the
# registry's cifar10 entry at its md5s and sizes, and serve it from 127.0.0.1.

TRAIN_PER_BATCH = 8
NUM_TRAIN, NUM_TEST = 5 * TRAIN_PER_BATCH, TRAIN_PER_BATCH


def write_tarball(path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@dataclass
class Copy:
    batches: dict
    files: dict[str, bytes]
    tarball: Path
    """``<served>/cifar-10-python.tar.gz``: what the local mirror serves."""
    unpacked: Path
    """A folder holding ``cifar-10-batches-py/``, the tarball extracted."""

    def split(self, split: str) -> tuple[np.ndarray, list[int]]:
        names = cifar.TRAIN_BATCHES if split == "train" else (cifar.TEST_BATCH,)
        return (expected_images(np.concatenate([self.batches[n][0] for n in names])),
                sum((self.batches[n][1] for n in names), []))


@pytest.fixture
def cifar_copy(tmp_path_factory, monkeypatch) -> Copy:
    """40 training and 8 test images as the official tarball and as its extracted folder, the registry's
    cifar10 entry describing them (counts and md5s), and no system copies."""
    batches = make_batches(np.random.default_rng(7), per_batch=TRAIN_PER_BATCH)
    files = {name: python2_batch(*batch) for name, batch in batches.items()}
    root = tmp_path_factory.mktemp("cifar-copy")
    tarball = root / "served" / "cifar-10-python.tar.gz"
    write_tarball(tarball, files)
    (root / "unpacked" / "cifar-10-batches-py").mkdir(parents=True)
    for name, data in files.items():
        (root / "unpacked" / "cifar-10-batches-py" / name).write_bytes(data)
    spec = registry.get_spec("cifar10")
    archive = dataclasses.replace(spec.files[registry.ARCHIVE_KEY], gz_md5=hashlib.md5(tarball.read_bytes()).hexdigest(),
                                  size=tarball.stat().st_size)
    unpacked = {key: dataclasses.replace(f, gz_md5=hashlib.md5(files[f.stem]).hexdigest(), size=len(files[f.stem]))
                for key, f in spec.unpacked.items()}
    monkeypatch.setitem(registry._REGISTRY, "cifar10", dataclasses.replace(
        spec, num_train=NUM_TRAIN, num_test=NUM_TEST, files={registry.ARCHIVE_KEY: archive}, unpacked=unpacked))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    sources.forget_loaded()
    return Copy(batches, files, tarball, root / "unpacked")


class Mirror(BaseHTTPRequestHandler):
    """``/ok/<file>`` serves the file of the folder ``server.root``, ``/corrupt/<file>`` the same with
    one byte changed, ``/truncated/<file>`` announces its length and sends half; anything else is a 404."""

    def do_GET(self):
        mode, _, name = self.path.strip("/").partition("/")
        path = self.server.root / name
        if mode not in ("ok", "corrupt", "truncated") or not path.is_file():
            self.send_error(404)
            return
        body = bytearray(path.read_bytes())
        announced = len(body)
        if mode == "corrupt":
            body[len(body) // 2] ^= 0x01
        elif mode == "truncated":
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(bytes(body))
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(cifar_copy):
    """A mirror on 127.0.0.1 serving the tarball; its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    httpd.root = cifar_copy.tarball.parent
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_registry_entry_is_the_published_dataset():
    spec = registry.get_spec("cifar10")
    assert (spec.classes, spec.image_shape, spec.num_train, spec.num_test) == (cifar.CLASSES, (3, 32, 32), 50_000, 10_000)
    archive = spec.files[registry.ARCHIVE_KEY]
    assert archive.name == "cifar-10-python.tar.gz" and archive.gz_md5 == cifar.TARBALL_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert spec.mirrors == ("https://www.cs.toronto.edu/~kriz/",)
    assert {f.name: f.gz_md5 for f in spec.unpacked.values()} == cifar.BATCH_MD5
    assert spec.unpacked_folder == "cifar-10-batches-py" and not any(f.gzipped for f in spec.unpacked.values())


def test_download_verify_and_train_a_run_that_evaluates_predicts_and_exports(cifar_copy, mirror, isolated_cache,
                                                                             monkeypatch, tmp_path, capsys):
    """`train --dataset cifar10` with nothing found downloads the tarball into the cache, checks its md5,
    and trains on its images (normalised per channel); the run's commands read the same copy."""
    import torch

    from cnnlab.compare import read_run
    from cnnlab.train.checkpoint import load_checkpoint
    from cnnlab.trained import TrainedRun

    monkeypatch.setenv("CNNLAB_MIRRORS", f"{mirror}/ok/")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--model", "lenet", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--no-progress", "--run-dir", str(run)]) == 0
    cached = isolated_cache / "cnnlab" / "cifar10"
    assert leftovers(cached) == ["cifar-10-python.tar.gz"]
    assert (cached / "cifar-10-python.tar.gz").read_bytes() == cifar_copy.tarball.read_bytes()
    ckpt = load_checkpoint(run)
    assert ckpt["dataset"] == "cifar10" and ckpt["image_shape"] == [3, 32, 32] and ckpt["in_channels"] == 3
    assert ckpt["classes"] == list(cifar.CLASSES) and ckpt["config"]["data_dir"] == str(cached)
    train_images = cifar_copy.split("train")[0] / 255.0
    assert np.allclose(ckpt["normalize"], [train_images.mean(axis=(0, 2, 3)), train_images.std(axis=(0, 2, 3))])
    assert read_run(run, "run").params == sum(p.numel() for p in TrainedRun.open(run).build_model().parameters())   # compare's count

    monkeypatch.setenv("CNNLAB_MIRRORS", "http://127.0.0.1:9/")   # from now on the cached copy must do
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu", "--out", str(tmp_path / "c.png")]) == 0
    assert f"lenet on cifar10 test ({NUM_TEST} images)" in capsys.readouterr().out
    assert main(["predict", str(run), "--index", "0", "--index", "3", "--device", "cpu"]) == 0
    labels = cifar_copy.split("test")[1]
    out = capsys.readouterr().out.splitlines()
    assert [line.partition("): ")[0] for line in out] == [f"test[0] (true: {cifar.CLASSES[labels[0]]}",
                                                         f"test[3] (true: {cifar.CLASSES[labels[3]]}"]
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert f"test ({NUM_TEST} images): top-1 agrees on {NUM_TEST}/{NUM_TEST}" in capsys.readouterr().out
    image = cifar_copy.split("test")[0][3]
    from PIL import Image

    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "photo.png")
    assert main(["predict", str(run), str(tmp_path / "photo.png"), "--index", "3", "--device", "cpu"]) == 0
    first, second = (line.partition("): ")[2] or line.partition(": ")[2] for line in capsys.readouterr().out.splitlines())
    assert first == second   # the PNG is read in colour, as the run's images were
    assert main(["predict", "--model-file", str(run / "model.onnx"), str(tmp_path / "photo.png")]) == 0
    assert capsys.readouterr().out.strip().partition(": ")[2] == first
    assert torch.equal(sources.load_split("cifar10", "test")[0][3], torch.from_numpy(image))


def test_cli_download_then_already_there(cifar_copy, mirror, tmp_path, capsys):
    dest = tmp_path / "d"
    assert main(["data", "download", "--dataset", "cifar10", "--dest", str(dest), "--quiet",
                 "--mirror", f"{mirror}/missing/", "--mirror", f"{mirror}/ok/"]) == 0
    assert "cifar10: 1 file(s) downloaded, 0 already there" in capsys.readouterr().out
    assert leftovers(dest) == ["cifar-10-python.tar.gz"]
    assert main(["data", "download", "--dataset", "cifar10", "--dest", str(dest), "--quiet",
                 "--mirror", f"{mirror}/missing/"]) == 0
    assert "cifar10: 0 file(s) downloaded, 1 already there and verified" in capsys.readouterr().out


@pytest.mark.parametrize("mode, words", [("corrupt", "corrupt download: the body is not the canonical "
                                                     "cifar-10-python.tar.gz (its md5 differs from the published"),
                                         ("truncated", "truncated body, received")])
def test_a_bad_download_is_refused_in_one_line_and_nothing_is_kept(cifar_copy, mirror, tmp_path, capsys, mode, words):
    dest = tmp_path / "d"
    assert main(["data", "download", "--dataset", "cifar10", "--dest", str(dest), "--quiet",
                 "--mirror", f"{mirror}/{mode}/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and f"{mirror}/{mode}/cifar-10-python.tar.gz" in err
    assert leftovers(dest) == []


def test_a_tarball_that_is_not_the_published_one_is_refused(cifar_copy, mirror, monkeypatch, tmp_path, capsys):
    """The registry's md5 decides: the same file served intact is refused when the md5 is the real one."""
    spec = registry.get_spec("cifar10")
    real = dataclasses.replace(spec.files[registry.ARCHIVE_KEY], gz_md5=cifar.TARBALL_MD5)
    monkeypatch.setitem(registry._REGISTRY, "cifar10", dataclasses.replace(spec, files={registry.ARCHIVE_KEY: real}))
    assert main(["data", "download", "--dataset", "cifar10", "--dest", str(tmp_path / "d"), "--quiet",
                 "--mirror", f"{mirror}/ok/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"its md5 differs from the published {cifar.TARBALL_MD5}" in err
    assert leftovers(tmp_path / "d") == []
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(cifar_copy.tarball.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the canonical cifar-10-python.tar.gz" in err and "--no-verify" in err


def test_found_through_cnnlab_data_as_the_tarball_and_remembered(cifar_copy, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(cifar_copy.tarball.parent))
    first = sources.locate("cifar10", download=False)
    assert (first.how, first.folder, first.checks) == ("CNNLAB_DATA", cifar_copy.tarball.parent,
                                                       {registry.ARCHIVE_KEY: "md5"})
    assert sources.locate("cifar10", download=False).checks == {registry.ARCHIVE_KEY: "cache"}
    images, labels = sources.load_split("cifar10", "train")
    expected, expected_labels = cifar_copy.split("train")
    assert images.shape == (NUM_TRAIN, 3, 32, 32) and np.array_equal(images.numpy(), expected)
    assert labels.tolist() == expected_labels


@pytest.mark.parametrize("where", ["parent", "batches folder", "dataset sub-folder"])
def test_found_through_data_dir_as_the_extracted_folder(cifar_copy, tmp_path, where):
    batches = cifar_copy.unpacked / "cifar-10-batches-py"
    if where == "dataset sub-folder":
        (tmp_path / "cifar10").mkdir()
        batches = batches.rename(tmp_path / "cifar10" / "cifar-10-batches-py")
    data_dir = {"parent": cifar_copy.unpacked, "batches folder": batches, "dataset sub-folder": tmp_path}[where]
    location = sources.locate("cifar10", data_dir, download=False)
    assert location.how == "data_dir" and location.folder == batches and location.verified
    assert {path.name for path in location.files.values()} == set(cifar.BATCH_MD5)
    assert set(location.checks.values()) == {"md5"}
    images, labels = sources.load_split("cifar10", "test", data_dir)
    expected, expected_labels = cifar_copy.split("test")
    assert np.array_equal(images.numpy(), expected) and labels.tolist() == expected_labels


def test_an_extracted_folder_with_a_changed_or_missing_batch_is_one_line(cifar_copy, capsys):
    batches = cifar_copy.unpacked / "cifar-10-batches-py"
    changed = bytearray(cifar_copy.files["data_batch_3"])
    changed[-100] ^= 0x01   # a pixel
    (batches / "data_batch_3").write_bytes(bytes(changed))
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(cifar_copy.unpacked)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{batches / 'data_batch_3'} is not the canonical data_batch_3" in err
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(cifar_copy.unpacked), "--no-verify"]) == 0
    assert "verified: no" in capsys.readouterr().out
    (batches / "test_batch").unlink()
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(cifar_copy.unpacked)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        f"error: --data-dir {cifar_copy.unpacked}: no cifar-10-python.tar.gz or cifar-10-batches-py/ in "
        f"{cifar_copy.unpacked} or {cifar_copy.unpacked / 'cifar10'} ({batches} lacks test_batch); point --data-dir "
        f"{cifar_copy.unpacked} at a folder holding cifar-10-python.tar.gz (or the cifar-10-batches-py/ folder it "
        f"extracts to)") in err


def test_data_info(cifar_copy, capsys):
    assert main(["data", "info", "--dataset", "cifar10", "--data-dir", str(cifar_copy.tarball.parent)]) == 0
    out = capsys.readouterr().out
    assert "dataset:  CIFAR-10 (cifar10), 10 classes, images (3, 32, 32)" in out
    assert f"found in: {cifar_copy.tarball.parent} (via data_dir)" in out and "verified: yes" in out
    assert "cifar-10-python.tar.gz" in out and "verified now (md5 of the published file)" in out
    assert f"train: {NUM_TRAIN} examples (registry: {NUM_TRAIN})" in out
    assert f"test: {NUM_TEST} examples (registry: {NUM_TEST})" in out
    labels = cifar_copy.split("train")[1]
    for name in ("airplane", "truck"):
        assert f"  {name:10s} {labels.count(cifar.CLASSES.index(name)):>6,d}\n" in out


def test_lenet_on_the_registry_dataset_is_sized_as_on_the_tarball_given_as_data(cifar_copy, published, tmp_path,
                                                                                capsys):
    """`--dataset cifar10 --model lenet` and `--data cifar-10-python.tar.gz --model lenet` are the same run:
    the same 32-pixel, 3-channel LeNet, normalisation and, step for step, the same weights."""
    import torch

    from cnnlab.train.checkpoint import load_checkpoint

    published(cifar_copy.files)
    common = ["--model", "lenet", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(cifar_copy.unpacked), *common,
                 "--run-dir", str(tmp_path / "registry")]) == 0
    assert main(["train", "--data", str(cifar_copy.tarball), *common, "--run-dir", str(tmp_path / "data")]) == 0
    registry_run, data_run = (load_checkpoint(tmp_path / name) for name in ("registry", "data"))
    for field_name in ("model_options", "input_size", "in_channels", "num_classes", "image_shape", "normalize",
                       "classes"):
        assert registry_run[field_name] == data_run[field_name], field_name
    assert registry_run["model_options"].get("image_size") == 32 and registry_run["in_channels"] == 3
    for name, tensor in registry_run["model_state"].items():
        assert torch.equal(tensor, data_run["model_state"][name]), name
    assert main(["summary", "--model", "lenet", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "lenet for cifar10: 3 channel(s), 10 classes, 32x32 images" in out


def test_converted_to_gray_28_pixels_for_training_and_evaluation(cifar_copy, tmp_path, capsys):
    """--channels 1 --image-size 28 converts the colour images, for training and again when the run is scored."""
    from cnnlab.trained import TrainedRun

    data = load_dataset(TrainConfig(dataset="cifar10", data_dir=str(cifar_copy.unpacked), channels=1, image_size=28),
                        progress=False)
    assert (data.channels, data.size, tuple(data.train[0].shape)) == (1, 28, (NUM_TRAIN, 1, 28, 28))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(cifar_copy.unpacked), "--channels", "1",
                 "--image-size", "28", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                 "--run-dir", str(run)]) == 0
    images, labels = TrainedRun.open(run).load_split("test")
    assert tuple(images.shape) == (NUM_TEST, 1, 28, 28) and labels.tolist() == cifar_copy.split("test")[1]
    assert main(["evaluate", str(run), "--device", "cpu", "--out", str(tmp_path / "c.png")]) == 0
