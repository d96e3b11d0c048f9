"""ResNet (d2l 7.6): residual blocks of two 3x3 conv-BN layers with an identity (or 1x1) shortcut."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.blocks import positive_ints
from cnnlab.models.registry import register_model


class Residual(nn.Module):
    """d2l's ``Residual``: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a strided
    1x1 conv when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                                    bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def resnet_stages(in_channels: int, widths: Sequence[int], blocks: Sequence[int]) -> list[nn.Module]:
    """Stages of residual blocks; every stage after the first halves the size and changes the width."""
    layers: list[nn.Module] = []
    prev = in_channels
    for i, (width, count) in enumerate(zip(widths, blocks)):
        for j in range(count):
            layers.append(Residual(prev, width, stride=2 if (i > 0 and j == 0) else 1))
            prev = width
    return layers


@register_model("resnet18", family="resnet", input_size=96)
def resnet18(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """ResNet-18 as d2l 7.6 gives it, for 96x96 inputs: 7x7 stem, four stages of two blocks (64-512)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        *resnet_stages(64, (64, 128, 256, 512), (2, 2, 2, 2)),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(512, num_classes))


@register_model("resnet_mini", family="resnet", input_size=28)
def resnet_mini(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128),
                blocks: Sequence[int] = (1, 1, 1)) -> nn.Sequential:
    """A 28x28 ResNet: 3x3 stem, then stages of residual blocks at 28, 14 and 7 pixels (32-64-128)."""
    widths = positive_ints(widths, "widths")
    blocks = positive_ints(blocks, "blocks")
    if len(widths) != len(blocks):
        raise ValueError(f"widths {widths} and blocks {blocks} must be of equal length (one per stage)")
    return nn.Sequential(
        nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
        *resnet_stages(widths[0], widths, blocks),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(widths[-1], num_classes))
