"""Network in Network (d2l 7.3): conv + two 1x1 convs per block, and global average pooling instead
of dense layers (the last block has one channel per class)."""

from __future__ import annotations

from torch import nn

from cnnlab.models.registry import register_model


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


@register_model("nin", family="nin", input_size=224)
def nin(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """NiN as d2l 7.3 gives it, for 224x224 inputs."""
    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


@register_model("nin_mini", family="nin", input_size=28)
def nin_mini(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """NiN for 28x28: 3x3 NiN blocks of 32, 64, 96 channels between max-pools (28 -> 14 -> 7 -> 3)."""
    return nn.Sequential(
        nin_block(in_channels, 32, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(2, stride=2),
        nin_block(32, 64, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(2, stride=2),
        nin_block(64, 96, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(96, num_classes, kernel_size=3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())
