"""DenseNet (d2l 7.7): dense blocks concatenate each layer's output to its input; transition layers
(1x1 conv + avg-pool) shrink channels and size between them."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cnnlab.models.blocks import positive_ints
from cnnlab.models.registry import register_model


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """DenseNet's pre-activation unit: BN, ReLU, 3x3 conv."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs: int, in_channels: int, growth_rate: int):
        super().__init__()
        self.net = nn.ModuleList(conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.AvgPool2d(kernel_size=2, stride=2))


def dense_body(channels: int, growth_rate: int, arch: Sequence[int]) -> tuple[list[nn.Module], int]:
    arch = positive_ints(arch, "arch (convs per dense block)")
    layers: list[nn.Module] = []
    for i, num_convs in enumerate(arch):
        block = DenseBlock(int(num_convs), channels, growth_rate)
        layers.append(block)
        channels = block.out_channels
        if i != len(arch) - 1:  # halve channels and size between blocks
            layers.append(transition_block(channels, channels // 2))
            channels //= 2
    return layers, channels


@register_model("densenet", family="densenet", input_size=96)
def densenet(num_classes: int = 10, in_channels: int = 1, growth_rate: int = 32,
             arch: Sequence[int] = (4, 4, 4, 4)) -> nn.Sequential:
    """DenseNet as d2l 7.7 gives it, for 96x96 inputs: 7x7 stem, four dense blocks of four convs."""
    body, channels = dense_body(64, growth_rate, arch)
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        *body,
        nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(channels, num_classes))


@register_model("densenet_mini", family="densenet", input_size=28)
def densenet_mini(num_classes: int = 10, in_channels: int = 1, growth_rate: int = 12,
                  arch: Sequence[int] = (4, 4, 4)) -> nn.Sequential:
    """A 28x28 DenseNet: 3x3 stem of 24 channels, three dense blocks (growth 12) at 28, 14 and 7 pixels."""
    body, channels = dense_body(24, growth_rate, arch)
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, kernel_size=3, padding=1), *body,
        nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(channels, num_classes))
