"""Every setting of a training run in one dataclass, validated before any work starts.

The defaults are the seed's recipe: LeNet on Fashion-MNIST, batch 256, SGD with lr 0.9,
10 epochs, Xavier-uniform initialisation, cross-entropy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import ConfigError


@dataclass
class TrainConfig:
    model: str = "lenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1024
    lr: float = 0.9
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    init: str = "xavier"
    seed: int = 0
    device: str = "auto"
    points_per_epoch: int = 5
    """Curve points per epoch, as the book's Animator (train loss and accuracy so far)."""
    train_limit: int | None = None
    """Train on the first N training examples only (quick runs, tests)."""
    test_limit: int | None = None
    resize: int | None = None
    """Input side in pixels; None uses the model's own input size."""
    compile: str = "auto"
    """torch.compile the training step: auto (on for CUDA, where it pays), on, off."""
    precision: str = "auto"
    """Autocast precision: auto (bf16 on CUDA GPUs that have it, else fp32), fp32, bf16."""

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, naming the setting) for values no run can use."""
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "points_per_epoch"):
            positive_int(name)
        for name in ("train_limit", "test_limit", "resize"):
            if getattr(self, name) is not None:
                positive_int(name)
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.momentum < 0 or self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        from cnnlab.train.fast import COMPILE_CHOICES, PRECISION_CHOICES

        if self.compile not in COMPILE_CHOICES:
            raise ConfigError(f"unknown compile setting {self.compile!r}; choose one of {', '.join(COMPILE_CHOICES)}")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {', '.join(unknown)}; "
                              f"this cnnlab knows: {', '.join(sorted(known))}")
        return cls(**data)


INITS = ("xavier", "default")
