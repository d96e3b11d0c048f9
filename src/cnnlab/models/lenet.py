"""LeNet-5 as d2l chapter 6 gives it, and the variants its exercises ask for.

``lenet`` with no options is exactly the book's network: two 5x5 conv + sigmoid + avg-pool blocks,
then dense 120-84-10.  Every option changes one thing the exercises name: the activation, the
pooling, batch normalisation (d2l 8.5's ``BNLeNet``), the channel counts and kernel sizes of the
conv layers (and so their number), the widths of the hidden dense layers (and so their number),
and dropout before each hidden dense layer.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from cnnlab.models.blocks import activation, dropout_rate, pool, positive_ints
from cnnlab.models.registry import register_model


def check_conv_sizes(kernels: list[int], input_size: int) -> int:
    """Each conv must fit the image it receives and leave at least 2x2 for its 2x2 pool (torch would
    stop with a RuntimeError deep inside the first forward pass instead).  Returns the side of the
    last pooled map."""
    size = input_size
    for i, k in enumerate(kernels):
        padded = size + 2 * (k // 2 if i == 0 else 0)
        if padded - k + 1 < 2:
            raise ValueError(f"kernel sizes {kernels} do not fit {input_size}x{input_size} inputs: conv layer "
                             f"{i + 1} gets {size}x{size} pixels, too few for a {k}x{k} kernel and its 2x2 pool; "
                             f"use smaller kernel sizes or fewer conv layers")
        size = (padded - k + 1) // 2
    return size


def build_lenet(num_classes: int = 10, in_channels: int = 1, *, activation_name: str = "sigmoid",
                pooling: str = "avg", batch_norm: bool = False, channels: Sequence[int] = (6, 16),
                kernel_sizes: Sequence[int] | int = (5, 5), dense: Sequence[int] = (120, 84),
                dropout: float = 0.0, input_size: int = 28) -> nn.Sequential:
    channels = positive_ints(channels, "channels", allow_single=True)
    kernels = positive_ints(kernel_sizes, "kernel sizes", allow_single=True)
    if len(kernels) == 1:
        kernels = kernels * len(channels)
    if len(kernels) != len(channels):
        raise ValueError(f"kernel sizes {kernels} must give one size per conv layer (channels {channels})")
    side = check_conv_sizes(kernels, input_size)
    dense = [] if dense in (None, [], ()) else positive_ints(dense, "dense widths", allow_single=True)
    dropout = dropout_rate(dropout)
    layers: list[nn.Module] = []
    prev = in_channels
    for i, (width, k) in enumerate(zip(channels, kernels)):
        # The book pads the first conv by 2 so 28x28 inputs keep their size; later convs are 'valid'.
        padding = k // 2 if i == 0 else 0
        layers.append(nn.Conv2d(prev, width, kernel_size=k, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(activation(activation_name))
        layers.append(pool(pooling))
        prev = width
    layers.append(nn.Flatten())
    # Worked out, not measured by a forward pass: on the meta device (TrainConfig.validate) a forward
    # imports PyTorch's shape machinery, 0.4 s of every `cnnlab train`.
    flat = prev * side * side
    for width in dense:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(flat, width, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(activation(activation_name))
        flat = width
    layers.append(nn.Linear(flat, num_classes))
    return nn.Sequential(*layers)


@register_model("lenet", family="lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, activation: str = "sigmoid", pooling: str = "avg",
          batch_norm: bool = False, channels: Sequence[int] = (6, 16), kernel_sizes: Sequence[int] = (5, 5),
          dense: Sequence[int] = (120, 84), dropout: float = 0.0, image_size: int = 28) -> nn.Sequential:
    """LeNet-5 (d2l 6.6): two 5x5 conv + sigmoid + avg-pool blocks, then dense 120-84-10; options vary it."""
    return build_lenet(num_classes, in_channels, activation_name=activation, pooling=pooling,
                       batch_norm=batch_norm, channels=channels, kernel_sizes=kernel_sizes, dense=dense,
                       dropout=dropout, input_size=image_size)


@register_model("lenet_bn", family="lenet", input_size=28)
def lenet_bn(num_classes: int = 10, in_channels: int = 1, activation: str = "sigmoid", pooling: str = "avg",
             channels: Sequence[int] = (6, 16), kernel_sizes: Sequence[int] = (5, 5),
             dense: Sequence[int] = (120, 84), dropout: float = 0.0, image_size: int = 28) -> nn.Sequential:
    """LeNet with batch normalisation after every conv and hidden dense layer (d2l 8.5's BNLeNet)."""
    return build_lenet(num_classes, in_channels, activation_name=activation, pooling=pooling, batch_norm=True,
                       channels=channels, kernel_sizes=kernel_sizes, dense=dense, dropout=dropout, input_size=image_size)


@register_model("lenet_wide", family="lenet", input_size=28)
def lenet_wide(num_classes: int = 10, in_channels: int = 1, activation: str = "relu", pooling: str = "max",
               channels: Sequence[int] = (32, 64), kernel_sizes: Sequence[int] = (5, 5),
               dense: Sequence[int] = (), dropout: float = 0.0, image_size: int = 28) -> nn.Sequential:
    """BN-ReLU-max-pool LeNet with 32/64 channels and a linear classifier (68k parameters; the `small` preset)."""
    return build_lenet(num_classes, in_channels, activation_name=activation, pooling=pooling, batch_norm=True,
                       channels=channels, kernel_sizes=kernel_sizes, dense=dense, dropout=dropout, input_size=image_size)
