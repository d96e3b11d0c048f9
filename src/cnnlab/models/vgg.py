"""VGG (d2l 7.2): networks built from repeated blocks of 3x3 convolutions and a max-pool."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from cnnlab.models.blocks import activation, classifier_mlp, flat_features
from cnnlab.models.registry import register_model

VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG_MINI = ((1, 16), (1, 32), (2, 64))


def vgg_block(num_convs: int, in_channels: int, out_channels: int, batch_norm: bool = False,
              pool_before_norm: bool = False) -> nn.Sequential:
    """``num_convs`` 3x3 convolutions (padding 1) with ReLU, then a 2x2 max-pool halving the size.

    ``pool_before_norm`` max-pools the last convolution's output before its batch norm and ReLU (as
    airbench does): they then run on a quarter of the pixels.  Without batch norm the network computes
    the same function either way (ReLU and max commute)."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
        if pool_before_norm and i == num_convs - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(activation("relu"))
        in_channels = out_channels
    if not pool_before_norm:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def check_arch(arch, image_size: int) -> list[tuple[int, int]]:
    """``arch`` as (convs, channels) pairs of positive integers, few enough blocks that the image
    keeps at least one pixel after each block's 2x2 max-pool."""
    def pair(block):
        return (isinstance(block, (list, tuple)) and len(block) == 2
                and all(not isinstance(v, bool) and isinstance(v, int) and v > 0 for v in block))

    if not isinstance(arch, (list, tuple)) or not arch or not all(pair(b) for b in arch):
        raise ValueError(f"arch must be a list of [convs, channels] pairs of positive integers "
                         f"(e.g. [[1,16],[1,32],[2,64]]), got {arch!r}")
    if image_size >> len(arch) < 1:
        raise ValueError(f"arch has {len(arch)} blocks, each halving the image: {image_size}x{image_size} inputs "
                         f"allow at most {image_size.bit_length() - 1}")
    return [(int(n), int(w)) for n, w in arch]


def build_vgg(arch: Sequence[Sequence[int]], num_classes: int, in_channels: int, image_size: int,
              hidden: int, batch_norm: bool, pool_before_norm: bool = False, dropout: float = 0.5) -> nn.Sequential:
    blocks, prev = [], in_channels
    for num_convs, width in check_arch(arch, image_size):
        blocks.append(vgg_block(num_convs, prev, width, batch_norm, pool_before_norm))
        prev = width
    features = nn.Sequential(*blocks)
    return nn.Sequential(*blocks, *classifier_mlp(flat_features(features, in_channels, image_size), hidden,
                                                  num_classes, dropout))


@register_model("vgg11", family="vgg", input_size=224)
def vgg11(num_classes: int = 10, in_channels: int = 1, arch: Sequence[Sequence[int]] = VGG11,
          image_size: int = 224, hidden: int = 4096, batch_norm: bool = False) -> nn.Sequential:
    """VGG-11 as d2l 7.2 defines it (``arch``: (convs, channels) per block), for 224x224 inputs."""
    return build_vgg(arch, num_classes, in_channels, image_size, hidden, batch_norm)


@register_model("vgg_mini", family="vgg", input_size=28)
def vgg_mini(num_classes: int = 10, in_channels: int = 1, arch: Sequence[Sequence[int]] = VGG_MINI,
             image_size: int = 28, hidden: int = 256, batch_norm: bool = True,
             pool_before_norm: bool = False, dropout: float = 0.5) -> nn.Sequential:
    """Three VGG blocks (16, 32, 2x64 channels) with batch norm for 28x28, and a 256-wide head with
    ``dropout``; ``pool_before_norm`` pools each block before its last batch norm and ReLU (see
    :func:`vgg_block`)."""
    return build_vgg(arch, num_classes, in_channels, image_size, hidden, batch_norm, pool_before_norm, dropout)
