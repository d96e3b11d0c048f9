"""AlexNet (d2l 7.1): the book's 224x224 network, and a compact 28x28 form with the same shape of design
(five convs, three max-pools, a two-layer dropout head) at a size a CPU trains in minutes."""

from __future__ import annotations

from torch import nn

from cnnlab.models.blocks import classifier_mlp, flat_features
from cnnlab.models.registry import register_model


@register_model("alexnet", family="alexnet", input_size=224)
def alexnet(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Sequential:
    """AlexNet as d2l 7.1 gives it, for 224x224 inputs (Fashion-MNIST resized)."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*features, *classifier_mlp(flat_features(features, in_channels, image_size), 4096,
                                                    num_classes))


@register_model("alexnet_mini", family="alexnet", input_size=28)
def alexnet_mini(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Sequential:
    """AlexNet's layout for 28x28: 3x3 convs 32-64-96-96-64, max-pools to 3x3, a 256-wide dropout head."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(64, 96, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 96, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 64, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*features, *classifier_mlp(flat_features(features, in_channels, image_size), 256,
                                                    num_classes))
