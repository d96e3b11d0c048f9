"""Shared fixtures: the canonical data in ../shared/data, and an isolated user cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNLAB_TEST_DATA", REPO.parent / "shared" / "data"))


def shared_dataset_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"canonical {name} files not found in {SHARED_DATA}")
    return path


@pytest.fixture
def fashion_dir() -> Path:
    """The canonical Fashion-MNIST gzip IDX files (read-only)."""
    return shared_dataset_dir("fashion-mnist")


@pytest.fixture
def mnist_dir() -> Path:
    """The canonical MNIST gzip IDX files (read-only)."""
    return shared_dataset_dir("mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user cache and no CNNLAB_DATA, so runs do not leak into ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return cache
