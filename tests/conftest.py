"""Shared fixtures: the committed data subsets, the full canonical data, and an isolated user cache.

``tests/data/`` holds the first 2,000 training and 1,000 test examples of Fashion-MNIST and MNIST and
the book's chapter 6 code (see its README): every test that can run on them does, on any clone.
``fashion_dir`` and ``mnist_dir`` are the subsets with the registry describing them, so verification
stays on.  The few tests that need the full canonical files (``full_fashion_dir``, ``full_mnist_dir``)
read them from ``$CNNLAB_TEST_DATA`` (default ``../shared/data``), and the one that checks the
committed chapter code against the chapter notes reads ``$CNNLAB_TEST_NOTES``; elsewhere they skip
saying what to set, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FULL_DATA = Path(os.environ.get("CNNLAB_TEST_DATA", REPO.parent / "shared" / "data"))


SUBSET_DATA = REPO / "tests" / "data"
SUBSET_TRAIN, SUBSET_TEST = 2_000, 1_000


def colour_folder(root, n_train=300, n_test=100, with_test=True, side=32):
    """Real Fashion-MNIST images as a colour image tree, each channel a different picture of the item (so
    the per-channel normalisation matters): root/<split>/<class>/<i>.png.  Returns the split arrays."""
    import numpy as np
    from PIL import Image

    from cnnlab.data import get_spec
    from cnnlab.data.sources import read_idx

    splits = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        if split == "test" and not with_test:
            continue
        images = read_idx(SUBSET_DATA / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz")[:n]
        labels = read_idx(SUBSET_DATA / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        rgb = np.stack([images, 255 - images, images // 2 + 60], axis=-1).astype(np.uint8)
        stored = []
        for i, (image, label) in enumerate(zip(rgb, labels)):
            folder = root / split / get_spec("fashion-mnist").classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
        for folder in sorted((root / split).iterdir()):   # as Pillow reads them back, in cnnlab's order
            for path in sorted(folder.iterdir()):
                stored.append(np.asarray(Image.open(path)).transpose(2, 0, 1))
        splits[split] = np.stack(stored)
    return splits


def require(found: bool, what: str, fix: str) -> None:
    """Skip (or, under CI=true, fail) a test whose external input is missing."""
    if found:
        return
    message = f"{what} not found; {fix}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def full_dataset_dir(name: str) -> Path:
    """The folder of the canonical, full gzip IDX files of ``name`` (skips without them)."""
    path = FULL_DATA / name
    require((path / "train-images-idx3-ubyte.gz").exists(), f"the full {name} files in {FULL_DATA}",
            f"set CNNLAB_TEST_DATA to a folder holding {name}/ with the canonical gzip IDX files")
    return path


@pytest.fixture
def full_fashion_dir() -> Path:
    """The canonical Fashion-MNIST gzip IDX files, 60,000 + 10,000 images (read-only)."""
    return full_dataset_dir("fashion-mnist")


@pytest.fixture
def full_mnist_dir() -> Path:
    """The canonical MNIST gzip IDX files, 60,000 + 10,000 images (read-only)."""
    return full_dataset_dir("mnist")


@pytest.fixture
def fashion_dir(subset_registry) -> Path:
    """The committed Fashion-MNIST subset, which the registry then describes: found and verified as the
    full dataset would be (2,000 training and 1,000 test images)."""
    return SUBSET_DATA / "fashion-mnist"


@pytest.fixture
def mnist_dir(subset_registry) -> Path:
    """The committed MNIST subset, which the registry then describes (as ``fashion_dir``)."""
    return SUBSET_DATA / "mnist"


@pytest.fixture
def fashion_subset() -> Path:
    """2,000 training and 1,000 test images of Fashion-MNIST, committed (load with verify=False, or
    use ``fashion_dir``)."""
    return SUBSET_DATA / "fashion-mnist"


@pytest.fixture
def mnist_subset() -> Path:
    """2,000 training and 1,000 test images of MNIST, committed (load with verify=False, or use ``mnist_dir``)."""
    return SUBSET_DATA / "mnist"


SUBSET_CHECKSUMS = {
    # (dataset, stem): (sha256 of the decompressed content, its size, md5 of the committed .gz)
    ("fashion-mnist", "train-images-idx3-ubyte"):
        ("71a9f8cec24060d6752b3e4940ce6d6fd729334afa47b735dd553481aa83b53e", 1568016, "8d83a59c5e977953a258aab7853a4f5d"),
    ("fashion-mnist", "train-labels-idx1-ubyte"):
        ("8983259dfbc9f185f92698916f7daf361704b43ba7d19568cc7bcdeefdc1bece", 2008, "e9183bba3c9e69ce78f4d79c3bc6d341"),
    ("fashion-mnist", "t10k-images-idx3-ubyte"):
        ("7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643", 784016, "41ac73a280e07bd65be01b8fd3822a18"),
    ("fashion-mnist", "t10k-labels-idx1-ubyte"):
        ("b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b", 1008, "b5aebe61efdcfbb7029c56b11e16acd0"),
    ("mnist", "train-images-idx3-ubyte"):
        ("729d340c0177402770b27c04f817dfb40ed8844459b35a9f11ae21067b05cf19", 1568016, "2a25106e99b44d41beaf66f990a257f0"),
    ("mnist", "train-labels-idx1-ubyte"):
        ("90795ea2219655a7281c0d6756d0ae8a33bebac7ec84bac89bbdcc5e3baa9f8c", 2008, "fc0a12125c347d27611a2e777eefa237"),
    ("mnist", "t10k-images-idx3-ubyte"):
        ("de7c252b04f05e1f8309634180ccdf286dc6dbac8c579b74e76e02ae0331ca52", 784016, "7d1e65ac28cc2a8baaffb01bb3a4def6"),
    ("mnist", "t10k-labels-idx1-ubyte"):
        ("832c0d20f0dc42e575488c75a83a970787d4c8d4d05831b2ef03701b4a478a90", 1008, "94eb77d0b7794d8a79b66cda22f8c7aa"),
}


def use_subset_registry(monkeypatch) -> Path:
    """Put the committed subsets in the registry in place of the full datasets: their counts and
    checksums (written down above).  ``monkeypatch`` undoes it; for a fixture wider than one test, use
    ``pytest.MonkeyPatch.context()``.  Returns the folder holding both subsets."""
    import dataclasses

    from cnnlab.data import registry

    for name in ("fashion-mnist", "mnist"):
        spec = registry.get_spec(name)
        files = {key: dataclasses.replace(f, sha256=SUBSET_CHECKSUMS[(name, f.stem)][0],
                                          size=SUBSET_CHECKSUMS[(name, f.stem)][1],
                                          gz_md5=SUBSET_CHECKSUMS[(name, f.stem)][2])
                 for key, f in spec.files.items()}
        subset = dataclasses.replace(spec, num_train=SUBSET_TRAIN, num_test=SUBSET_TEST, files=files)
        monkeypatch.setitem(registry._REGISTRY, name, subset)
    return SUBSET_DATA


@pytest.fixture
def subset_registry(monkeypatch):
    """The registry with the committed subsets in place of the full datasets, so resolution,
    verification and downloads are tested on any clone."""
    return use_subset_registry(monkeypatch)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user cache and no CNNLAB_DATA, so runs do not leak into ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return cache


class OneProcess:
    """Stands in for a distributed context: wrapping the model is all the step's builder asks of it."""

    def __init__(self):
        self.wrapped = []

    def wrap(self, model):
        self.wrapped.append(model)
        return model
