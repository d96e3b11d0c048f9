"""Building blocks shared by the model families: activations and pooling by name, list options checked,
the AlexNet/VGG dense head and the width of the features it takes.

Options reach factories as plain strings (from ``--option activation=relu``), so the families look
them up here and every family rejects an unknown name with the same one-line message.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}

POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (sigmoid, relu, gelu, tanh, silu, leaky_relu, elu)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def pool(name: str, kernel_size: int = 2, stride: int = 2, padding: int = 0) -> nn.Module:
    """A pooling layer by name: ``avg`` (the book's LeNet) or ``max`` (the exercise's alternative)."""
    try:
        return POOLS[name](kernel_size=kernel_size, stride=stride, padding=padding)
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLS)}") from None


def positive_ints(value, name: str, *, allow_single: bool = False) -> list[int]:
    """A non-empty list of positive integers (or, with ``allow_single``, one integer), else ValueError."""
    values = [value] if allow_single and isinstance(value, int) else value
    if (not isinstance(values, (list, tuple)) or not values
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values)):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    return list(values)


def dropout_rate(value) -> float:
    """A dropout probability in [0, 1), else ValueError (1 would zero every unit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")
    return float(value)


def flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Width of ``features``' flattened output for one ``image_size`` image (sizes the first dense layer)."""
    with torch.no_grad():
        was_training = features.training
        features.eval()
        width = features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1]
        features.train(was_training)
    return width


def classifier_mlp(in_features: int, hidden: int, num_classes: int, dropout: float = 0.5) -> list[nn.Module]:
    """AlexNet's and VGG's head: two hidden ReLU dense layers with dropout, then the class scores."""
    dropout = dropout_rate(dropout)
    return [nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes)]
