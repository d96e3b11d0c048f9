"""KMNIST in the registry.  Its real files cannot be fetched here, so the reader and the verification are
tested with gzip IDX files of the same format, written below with gzip and struct (not with cnnlab), and
the registry entry pointed at their md5s, as it points at the published md5s of the real ones."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct

import numpy as np
import pytest

from cnnlab.cli.main import main
from cnnlab.data import registry
from cnnlab.data.sources import forget_loaded, load_split, locate


def write_idx_gz(path, array: np.ndarray) -> str:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def kmnist_copy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "kmnist"
    folder.mkdir()
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (120, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(120) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(30) % 10}
    md5s = {stem: write_idx_gz(folder / f"{stem}.gz", a) for stem, a in arrays.items()}
    spec = registry.get_spec("kmnist")
    files = {key: dataclasses.replace(f, gz_md5=md5s[f.stem]) for key, f in spec.files.items()}
    monkeypatch.setitem(registry._REGISTRY, "kmnist", dataclasses.replace(spec, files=files, num_train=120, num_test=30))
    forget_loaded()
    return folder, arrays


def test_kmnist_is_verified_by_the_gz_md5_and_read(kmnist_copy):
    folder, arrays = kmnist_copy
    location = locate("kmnist", folder)
    assert set(location.checks.values()) == {"md5"} and location.verified
    assert set(locate("kmnist", folder).checks.values()) == {"cache"}     # remembered, not re-hashed
    images, labels = load_split("kmnist", "train", folder)
    assert images.shape == (120, 1, 28, 28)
    assert np.array_equal(images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert registry.get_spec("kmnist").classes[:3] == ("o", "ki", "su")


def test_a_kmnist_file_that_is_not_the_canonical_gz_is_refused(kmnist_copy, capsys):
    folder, arrays = kmnist_copy
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.unlink()
    with open(folder / "t10k-labels-idx1-ubyte", "wb") as f:     # the same content, unpacked
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 30) + arrays["t10k-labels-idx1-ubyte"].astype(np.uint8).tobytes())
    assert main(["data", "info", "--dataset", "kmnist", "--data-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the canonical t10k-labels-idx1-ubyte.gz" in err and "--no-verify" in err
    assert main(["data", "info", "--dataset", "kmnist", "--data-dir", str(folder), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "Kuzushiji-MNIST (kmnist)" in out and "test: 30 examples" in out
