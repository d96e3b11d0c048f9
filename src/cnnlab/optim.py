"""Optimizers by name, built from a TrainConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnlab.errors import ConfigError

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

OPTIMIZERS = ("sgd",)


def build_optimizer(config: "TrainConfig", model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(config: "TrainConfig", optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step learning-rate schedule, or None for a constant rate (the book's recipe)."""
    return None
