"""The validation split: a seeded, stratified part of the training data held out."""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted: ``round(fraction * n_c)`` examples of every class
    ``c`` (at least one of each class with two or more) go to validation, chosen by ``seed``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be between 0 and 1, got {fraction!r}")
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = int(round(fraction * members.size))
        if members.size >= 2:
            k = min(max(k, 1), members.size - 1)
        else:
            k = 0
        held.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val
