"""The training engine (``Trainer``), its callbacks, checkpoints and whole runs (``train``).

The names below are loaded on first use, so importing a leaf such as ``cnnlab.train.config`` does
not import the engine and everything it needs (which would make a cycle of every module the engine
imports that reads the config).
"""

import importlib

_EXPORTS = {
    "Callback": "callbacks", "EpochPrinter": "callbacks", "ProgressBar": "callbacks", "RunDirWriter": "callbacks",
    "TrainConfig": "config",
    "Interrupted": "engine", "Trainer": "engine", "evaluate_accuracy": "engine", "init_weights": "engine",
    "build_trainer": "run", "train": "run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnnlab.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cnnlab.train.{_EXPORTS[name]}"), name)
