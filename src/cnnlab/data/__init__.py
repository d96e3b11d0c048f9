"""Data: the IDX format, the dataset registry, where files come from, and batching.

Data flows one way: verified files -> numpy arrays -> uint8/int64 tensors -> device-resident
batches (:class:`BatchIterator`).

The names below are imported on first use, not with the package: the processes that decode an image
folder import :mod:`cnnlab.data.decode`, and so this package, and must not pay for torch (which
:mod:`cnnlab.data.loader` imports) on every start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnlab.data.idx import read_idx, write_idx
    from cnnlab.data.loader import BatchIterator, epoch_permutation, to_float
    from cnnlab.data.registry import SPLITS, DatasetSpec, FileSpec, get_spec, list_datasets
    from cnnlab.data.sources import (Location, cache_dir, class_counts, download_dataset, forget_loaded,
                                     load_split, locate)

_HOME = {
    "read_idx": "idx", "write_idx": "idx",
    "BatchIterator": "loader", "epoch_permutation": "loader", "to_float": "loader",
    "SPLITS": "registry", "DatasetSpec": "registry", "FileSpec": "registry", "get_spec": "registry",
    "list_datasets": "registry",
    "Location": "sources", "cache_dir": "sources", "class_counts": "sources", "download_dataset": "sources",
    "forget_loaded": "sources", "load_split": "sources", "locate": "sources",
}
"""Each public name -> the module of this package that defines it."""

__all__ = [
    "SPLITS", "BatchIterator", "DatasetSpec", "FileSpec", "Location", "cache_dir", "class_counts",
    "download_dataset", "epoch_permutation", "forget_loaded", "get_spec", "list_datasets",
    "load_split", "locate", "read_idx", "to_float", "write_idx",
]


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
