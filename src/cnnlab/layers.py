"""Learnable layers built on :mod:`cnnlab.ops`, the convolution written from scratch.

* :class:`Conv2D` is the book's layer (d2l 6.2.3): one 2-D kernel and a scalar bias applied to
  a single (height, width) image with :func:`cnnlab.ops.corr2d`.
* :class:`ScratchConv2d` and :class:`ScratchPool2d` take the batched (n, c, h, w) layout and the
  arguments of ``torch.nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.AvgPool2d``, so a network such as
  LeNet can be rebuilt with every convolution and pooling computed by cnnlab's own code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab import ops
from cnnlab.errors import ConfigError


class Conv2D(nn.Module):
    """The book's convolutional layer: ``corr2d(x, weight) + bias`` on one (h, w) image.

    The weight starts uniform in [0, 1) as in d2l (``torch.rand``); pass a seeded
    ``generator`` for a reproducible start.
    """

    def __init__(self, kernel_size: ops.IntPair, bias: bool = True, padding: ops.Padding = 0,
                 stride: ops.IntPair = 1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.kernel_size = ops.normalize_pair(kernel_size, "kernel size")
        self.padding = ops.normalize_padding(padding)
        self.stride = ops.normalize_pair(stride, "stride")
        self.weight = nn.Parameter(torch.rand(self.kernel_size, generator=generator))
        self.bias = nn.Parameter(torch.zeros(1)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.corr2d(x, self.weight, padding=self.padding, stride=self.stride)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, bias={self.bias is not None}, "
                f"padding={self.padding}, stride={self.stride}")


class ScratchConv2d(nn.Module):
    """A drop-in for ``torch.nn.Conv2d`` (groups=1, dilation=1) computed by :func:`cnnlab.ops.conv2d`.

    Parameters have ``nn.Conv2d``'s shapes, names and initialisation (Kaiming-uniform weight
    with ``a = sqrt(5)``, bias uniform in +-1/sqrt(fan_in)), so ``load_state_dict`` works both
    ways between the two.  ``padding`` may also be per side, ``(top, bottom, left, right)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: ops.IntPair,
                 stride: ops.IntPair = 1, padding: ops.Padding = 0, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, not {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ops.normalize_pair(kernel_size, "kernel size")
        self.stride = ops.normalize_pair(stride, "stride")
        self.padding = ops.normalize_padding(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv2d(x, self.weight, self.bias, padding=self.padding, stride=self.stride)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class ScratchPool2d(nn.Module):
    """Max or average pooling computed by :func:`cnnlab.ops.pool2d`.

    Like ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (and unlike the book's ``pool2d`` function) the
    stride defaults to the pool size.  Average pooling counts padded zeros, as PyTorch's
    ``count_include_pad=True`` default does.
    """

    def __init__(self, pool_size: ops.IntPair, mode: str = "max", stride: ops.IntPair | None = None,
                 padding: ops.Padding = 0) -> None:
        super().__init__()
        self.pool_size = ops.normalize_pair(pool_size, "pool size")
        self.mode = mode
        self.stride = self.pool_size if stride is None else ops.normalize_pair(stride, "stride")
        self.padding = ops.normalize_padding(padding)
        if mode not in ("max", "avg"):
            raise ConfigError(f"pooling mode must be 'max' or 'avg', not {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.pool2d(x, self.pool_size, self.mode, padding=self.padding, stride=self.stride)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, mode={self.mode!r}, stride={self.stride}, padding={self.padding}"
