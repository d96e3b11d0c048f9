"""CIFAR-10's python batches, read without unpickling.  The real tarball cannot be fetched here, so the
tests write batch files of the same layout: byte for byte as Python 2's cPickle (protocol 2) wrote the
official ones, and as Python 3's pickle writes NumPy arrays, and check the pixels and labels read back;
a file that names anything else (a hostile pickle) is refused without running it."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

import cnnlab.data.cifar as cifar
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
