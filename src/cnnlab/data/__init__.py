"""Data: the IDX format, the dataset registry, where files come from, and batching.

Data flows one way: verified files -> numpy arrays -> uint8/int64 tensors -> device-resident
batches (:class:`BatchIterator`).
"""

from cnnlab.data.idx import read_idx, write_idx
from cnnlab.data.loader import BatchIterator, epoch_permutation, to_float
from cnnlab.data.registry import SPLITS, DatasetSpec, FileSpec, get_spec, list_datasets
from cnnlab.data.sources import (Location, cache_dir, class_counts, download_dataset, forget_loaded,
                                 load_split, locate)

__all__ = [
    "SPLITS", "BatchIterator", "DatasetSpec", "FileSpec", "Location", "cache_dir", "class_counts",
    "download_dataset", "epoch_permutation", "forget_loaded", "get_spec", "list_datasets",
    "load_split", "locate", "read_idx", "to_float", "write_idx",
]
