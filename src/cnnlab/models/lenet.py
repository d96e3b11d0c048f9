"""LeNet-5 as d2l chapter 6 gives it: sigmoid activations, average pooling, no final Gaussian layer."""

from __future__ import annotations

from torch import nn

from cnnlab.models.registry import register_model


@register_model("lenet", family="lenet")
def lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet-5 (d2l 6.6): two 5x5 conv + sigmoid + avg-pool blocks, then dense 120-84-10."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes))
