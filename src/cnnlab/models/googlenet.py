"""GoogLeNet (d2l 7.4): Inception blocks, four parallel paths concatenated along channels."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model


class Inception(nn.Module):
    """Paths: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max-pool then 1x1.  Output channels c1+c2[1]+c3[1]+c4."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, c1, kernel_size=1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(in_channels, c2[0], kernel_size=1), nn.ReLU(),
                                nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(in_channels, c3[0], kernel_size=1), nn.ReLU(),
                                nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2), nn.ReLU())
        self.b4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                                nn.Conv2d(in_channels, c4, kernel_size=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.b1(x), self.b2(x), self.b3(x), self.b4(x)), dim=1)


@register_model("googlenet", family="googlenet", input_size=96)
def googlenet(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """GoogLeNet as d2l 7.4 gives it, for 96x96 inputs."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        Inception(192, 64, (96, 128), (16, 32), 32),
        Inception(256, 128, (128, 192), (32, 96), 64),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        Inception(480, 192, (96, 208), (16, 48), 64),
        Inception(512, 160, (112, 224), (24, 64), 64),
        Inception(512, 128, (128, 256), (24, 64), 64),
        Inception(512, 112, (144, 288), (32, 64), 64),
        Inception(528, 256, (160, 320), (32, 128), 128),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        Inception(832, 256, (160, 320), (32, 128), 128),
        Inception(832, 384, (192, 384), (48, 128), 128),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(1024, num_classes))


@register_model("googlenet_mini", family="googlenet", input_size=28)
def googlenet_mini(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A 28x28 GoogLeNet: a 3x3 stem and four small Inception blocks between two max-pools (28 -> 14 -> 7)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1), nn.ReLU(),
        Inception(32, 16, (24, 32), (4, 8), 8),
        Inception(64, 32, (32, 48), (8, 24), 16),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        Inception(120, 48, (48, 104), (8, 24), 24),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        Inception(200, 64, (64, 128), (16, 32), 32),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(256, num_classes))
