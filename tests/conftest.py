"""Shared fixtures: the committed data subsets, the full canonical data, and an isolated user cache.

``tests/data/`` holds the first 2,000 training and 1,000 test examples of Fashion-MNIST and MNIST
(see its README): every test that can run on them does, on any clone.  The few that need the full
data or the book's own text read them from ``$CNNLAB_TEST_DATA`` (default ``../shared/data``) and
``../shared/seeds``; elsewhere they skip saying what to set, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNLAB_TEST_DATA", REPO.parent / "shared" / "data"))


SUBSET_DATA = REPO / "tests" / "data"
SUBSET_TRAIN, SUBSET_TEST = 2_000, 1_000


def require(found: bool, what: str, fix: str) -> None:
    """Skip (or, under CI=true, fail) a test whose external input is missing."""
    if found:
        return
    message = f"{what} not found; {fix}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def shared_dataset_dir(name: str) -> Path:
    path = SHARED_DATA / name
    require((path / "train-images-idx3-ubyte.gz").exists(), f"the full {name} files in {SHARED_DATA}",
            f"set CNNLAB_TEST_DATA to a folder holding {name}/ with the canonical gzip IDX files")
    return path


@pytest.fixture
def fashion_dir() -> Path:
    """The canonical Fashion-MNIST gzip IDX files (read-only)."""
    return shared_dataset_dir("fashion-mnist")


@pytest.fixture
def mnist_dir() -> Path:
    """The canonical MNIST gzip IDX files (read-only)."""
    return shared_dataset_dir("mnist")


@pytest.fixture
def fashion_subset() -> Path:
    """2,000 training and 1,000 test images of Fashion-MNIST, committed (load with verify=False)."""
    return SUBSET_DATA / "fashion-mnist"


@pytest.fixture
def mnist_subset() -> Path:
    """2,000 training and 1,000 test images of MNIST, committed (load with verify=False)."""
    return SUBSET_DATA / "mnist"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user cache and no CNNLAB_DATA, so runs do not leak into ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return cache
