"""Convolution from scratch: the building blocks of d2l chapter 6, each proven against PyTorch.

Two-dimensional cross-correlation (what deep learning calls "convolution") slides a kernel
window over the input from the top-left corner, left to right, top to bottom; at each position
the window and the kernel are multiplied element-wise and summed into one output value.

Each idea comes twice:

* a ``*_loop`` function that follows the book's explanation line by line (one Python iteration
  per output position), for reading;
* a vectorised function, used by default, that views every window at once with
  ``Tensor.unfold`` (a strided view, no copy) and contracts it with the kernel in one
  ``einsum``.  It has no Python loop over positions and is differentiable end to end.

Conventions shared by every function here:

``padding``
    zero padding added around the input, given as an ``int`` (the same on all four sides),
    ``(ph, pw)`` (``ph`` rows on top *and* bottom, ``pw`` columns left *and* right, as
    ``torch.nn.Conv2d`` means it), or per side ``(top, bottom, left, right)``.
``stride``
    an ``int`` or ``(row_stride, column_stride)``; both must be at least 1.

Invalid arguments raise :class:`cnnlab.errors.ConfigError`, which is a ``ValueError``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]

__all__ = [
    "normalize_padding",
    "normalize_pair",
    "output_shape",
    "corr2d_loop",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "conv2d",
    "pool2d_loop",
    "pool2d",
]


# --------------------------------------------------------------------------- argument handling


def normalize_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``int``, ``(ph, pw)`` or ``(top, bottom, left, right)`` -> ``(top, bottom, left, right)``."""
    if isinstance(padding, bool):
        raise ConfigError(f"padding must be an int or a tuple of ints, not {padding!r}")
    if isinstance(padding, int):
        sides = (padding,) * 4
    else:
        values = tuple(padding)
        if len(values) == 2:
            sides = (values[0], values[0], values[1], values[1])
        elif len(values) == 4:
            sides = values
        else:
            raise ConfigError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), "
                              f"not {padding!r}")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in sides):
        raise ConfigError(f"padding must hold ints, not {padding!r}")
    if min(sides) < 0:
        raise ConfigError(f"padding must be zero or positive on every side, not {padding!r}")
    return tuple(sides)


def normalize_pair(value: IntPair, name: str, minimum: int = 1) -> tuple[int, int]:
    """``int`` or ``(rows, columns)`` -> ``(rows, columns)``, each at least ``minimum``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an int or (rows, columns), not {value!r}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ConfigError(f"{name} must be an int or (rows, columns) of ints, not {value!r}")
    if min(pair) < minimum:
        raise ConfigError(f"{name} must be at least {minimum} in both directions, not {value!r}")
    return pair


def output_shape(input_size: IntPair, kernel_size: IntPair, padding: Padding = 0,
                 stride: IntPair = 1) -> tuple[int, int]:
    """The ``(height, width)`` a cross-correlation (or pooling) window produces.

    Per direction: ``floor((n - k + p + s) / s)`` with ``n`` the input size, ``k`` the kernel
    size, ``p`` the *total* padding (both sides together) and ``s`` the stride -- the formula of
    d2l section 6.3, and what ``torch.nn.Conv2d`` produces.
    """
    n_h, n_w = normalize_pair(input_size, "input size")
    k_h, k_w = normalize_pair(kernel_size, "kernel size")
    top, bottom, left, right = normalize_padding(padding)
    s_h, s_w = normalize_pair(stride, "stride")
    p_h, p_w = top + bottom, left + right
    if k_h > n_h + p_h or k_w > n_w + p_w:
        raise ConfigError(f"kernel {k_h}x{k_w} is larger than the padded input "
                          f"{n_h + p_h}x{n_w + p_w} ({n_h}x{n_w} plus padding {p_h}x{p_w})")
    return (n_h - k_h + p_h + s_h) // s_h, (n_w - k_w + p_w + s_w) // s_w


def _require_dims(tensor: torch.Tensor, dims: int, name: str, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor {layout}, not {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ConfigError(f"{name} must be {dims}-D {layout}, got shape {tuple(tensor.shape)}")


def _pad(X: torch.Tensor, sides: tuple[int, int, int, int], value: float = 0.0) -> torch.Tensor:
    top, bottom, left, right = sides
    if not any(sides):
        return X
    # F.pad lists the last dimension first: (left, right, top, bottom).
    return F.pad(X, (left, right, top, bottom), value=value)


def _windows(X: torch.Tensor, kernel_size: tuple[int, int], padding: Padding, stride: IntPair,
             pad_value: float = 0.0) -> torch.Tensor:
    """Every window of the last two dimensions at once: shape ``(..., out_h, out_w, k_h, k_w)``.

    ``Tensor.unfold(dim, size, step)`` returns a strided *view*: element ``[..., i, j, a, b]``
    is ``X_padded[..., i * s_h + a, j * s_w + b]``.  Nothing is copied until a computation reads it.
    """
    sides = normalize_padding(padding)
    s_h, s_w = normalize_pair(stride, "stride")
    output_shape(tuple(X.shape[-2:]), kernel_size, sides, (s_h, s_w))  # validates sizes
    k_h, k_w = kernel_size
    padded = _pad(X, sides, pad_value)
    return padded.unfold(-2, k_h, s_h).unfold(-2, k_w, s_w)


# --------------------------------------------------------------------------- cross-correlation


def corr2d_loop(X: torch.Tensor, K: torch.Tensor, padding: Padding = 0,
                stride: IntPair = 1) -> torch.Tensor:
    """2-D cross-correlation of ``X`` (h, w) with ``K`` (k_h, k_w), the book's loop.

    One Python iteration per output value: the slow, readable definition.  Differentiable
    (autograd records each slice assignment).
    """
    _require_dims(X, 2, "input X", "(height, width)")
    _require_dims(K, 2, "kernel K", "(k_h, k_w)")
    h, w = K.shape
    s_h, s_w = normalize_pair(stride, "stride")
    out_h, out_w = output_shape(tuple(X.shape), (h, w), padding, (s_h, s_w))
    X = _pad(X, normalize_padding(padding))
    Y = torch.zeros((out_h, out_w), dtype=torch.result_type(X, K), device=X.device)
    for i in range(out_h):
        for j in range(out_w):
            window = X[i * s_h:i * s_h + h, j * s_w:j * s_w + w]
            Y[i, j] = (window * K).sum()
    return Y


def corr2d(X: torch.Tensor, K: torch.Tensor, padding: Padding = 0, stride: IntPair = 1) -> torch.Tensor:
    """2-D cross-correlation of ``X`` (h, w) with ``K`` (k_h, k_w), vectorised.

    Same result as :func:`corr2d_loop`: all windows are viewed at once and multiplied with the
    kernel in a single contraction.
    """
    _require_dims(X, 2, "input X", "(height, width)")
    _require_dims(K, 2, "kernel K", "(k_h, k_w)")
    windows = _windows(X, tuple(K.shape), padding, stride)        # (out_h, out_w, k_h, k_w)
    return torch.einsum("ijab,ab->ij", windows, K)


def _check_channels(X: torch.Tensor, K: torch.Tensor, x_axis: int, k_axis: int) -> None:
    if X.shape[x_axis] != K.shape[k_axis]:
        raise ConfigError(f"channel mismatch: input X {tuple(X.shape)} has {X.shape[x_axis]} channels "
                          f"but kernel K {tuple(K.shape)} expects {K.shape[k_axis]}")


def corr2d_multi_in(X: torch.Tensor, K: torch.Tensor, padding: Padding = 0,
                    stride: IntPair = 1) -> torch.Tensor:
    """Several input channels, one output channel: ``X`` (c, h, w), ``K`` (c, k_h, k_w) -> (out_h, out_w).

    One cross-correlation per channel, summed over channels (d2l 6.4.1), in one contraction.
    """
    _require_dims(X, 3, "input X", "(channels, height, width)")
    _require_dims(K, 3, "kernel K", "(channels, k_h, k_w)")
    _check_channels(X, K, 0, 0)
    windows = _windows(X, tuple(K.shape[-2:]), padding, stride)   # (c, out_h, out_w, k_h, k_w)
    return torch.einsum("cijab,cab->ij", windows, K)


def corr2d_multi_in_out(X: torch.Tensor, K: torch.Tensor, padding: Padding = 0,
                        stride: IntPair = 1) -> torch.Tensor:
    """Several input and output channels: ``X`` (c_i, h, w), ``K`` (c_o, c_i, k_h, k_w) -> (c_o, out_h, out_w).

    Each output channel is :func:`corr2d_multi_in` with its own kernel; the results are stacked
    (d2l 6.4.2), here computed in one contraction.
    """
    _require_dims(X, 3, "input X", "(channels, height, width)")
    _require_dims(K, 4, "kernel K", "(out_channels, in_channels, k_h, k_w)")
    _check_channels(X, K, 0, 1)
    windows = _windows(X, tuple(K.shape[-2:]), padding, stride)   # (c_i, out_h, out_w, k_h, k_w)
    return torch.einsum("cijab,ocab->oij", windows, K)


def corr2d_multi_in_out_1x1(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a matrix multiplication: ``X`` (c_i, h, w), ``K`` (c_o, c_i, 1, 1).

    A 1x1 kernel looks at one pixel at a time, so it is a fully connected layer applied to each
    pixel's channel vector: ``(c_o, c_i) @ (c_i, h * w)`` (d2l 6.4.3).
    """
    _require_dims(X, 3, "input X", "(channels, height, width)")
    _require_dims(K, 4, "kernel K", "(out_channels, in_channels, 1, 1)")
    if tuple(K.shape[-2:]) != (1, 1):
        raise ConfigError(f"a 1x1 convolution needs a kernel of shape (c_o, c_i, 1, 1), "
                          f"got {tuple(K.shape)}")
    _check_channels(X, K, 0, 1)
    c_i, h, w = X.shape
    c_o = K.shape[0]
    return (K.reshape(c_o, c_i) @ X.reshape(c_i, h * w)).reshape(c_o, h, w)


def conv2d(X: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None = None, padding: Padding = 0,
           stride: IntPair = 1) -> torch.Tensor:
    """Batched multi-channel cross-correlation, the layout of ``torch.nn.functional.conv2d``.

    ``X`` (n, c_i, h, w), ``K`` (c_o, c_i, k_h, k_w), optional ``bias`` (c_o,)
    -> (n, c_o, out_h, out_w).  Unlike ``F.conv2d``, ``padding`` may differ per side.
    """
    _require_dims(X, 4, "input X", "(batch, channels, height, width)")
    _require_dims(K, 4, "kernel K", "(out_channels, in_channels, k_h, k_w)")
    _check_channels(X, K, 1, 1)
    n, c_i = X.shape[:2]
    c_o, _, k_h, k_w = K.shape
    windows = _windows(X, (k_h, k_w), padding, stride)            # (n, c_i, out_h, out_w, k_h, k_w)
    out_h, out_w = windows.shape[2:4]
    # im2col: one column of c_i * k_h * k_w values per output position, then a single batched
    # matrix product (c_o, c_i*k_h*k_w) @ (n, c_i*k_h*k_w, out_h*out_w).  Ordering the columns
    # this way makes the product come out already in (n, c_o, out_h * out_w) layout.
    columns = windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c_i * k_h * k_w, out_h * out_w)
    Y = (K.reshape(c_o, c_i * k_h * k_w) @ columns).reshape(n, c_o, out_h, out_w)
    if bias is not None:
        if bias.shape != (K.shape[0],):
            raise ConfigError(f"bias must have shape ({K.shape[0]},) for {K.shape[0]} output channels, "
                              f"got {tuple(bias.shape)}")
        Y = Y + bias.reshape(1, -1, 1, 1)
    return Y


# --------------------------------------------------------------------------- pooling

_POOL_MODES = ("max", "avg")


def _check_pool_args(X: torch.Tensor, pool_size: IntPair, mode: str,
                     padding: Padding) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    if not isinstance(X, torch.Tensor) or X.dim() < 2:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ConfigError(f"pooling needs a tensor of at least 2 dimensions (..., height, width), got {shape}")
    if mode not in _POOL_MODES:
        raise ConfigError(f"pooling mode must be 'max' or 'avg', not {mode!r}")
    size = normalize_pair(pool_size, "pool size")
    sides = normalize_padding(padding)
    if mode == "max" and (max(sides[:2]) >= size[0] or max(sides[2:]) >= size[1]):
        # Otherwise a window could hold only padding, whose maximum is -inf.
        raise ConfigError(f"max pooling padding {sides} must be smaller than the pool size "
                          f"{size[0]}x{size[1]} on every side")
    return size, sides


def pool2d_loop(X: torch.Tensor, pool_size: IntPair, mode: str = "max", padding: Padding = 0,
                stride: IntPair = 1) -> torch.Tensor:
    """Max or average pooling of ``X`` (h, w), the book's loop (one iteration per output value).

    Padding follows PyTorch: max pooling pads with ``-inf`` (padding never wins), average pooling
    pads with zeros and counts them in the mean (``count_include_pad=True``).
    """
    _require_dims(X, 2, "input X", "(height, width)")
    (p_h, p_w), sides = _check_pool_args(X, pool_size, mode, padding)
    s_h, s_w = normalize_pair(stride, "stride")
    out_h, out_w = output_shape(tuple(X.shape), (p_h, p_w), sides, (s_h, s_w))
    X = _pad(X, sides, float("-inf") if mode == "max" else 0.0)
    Y = torch.zeros((out_h, out_w), dtype=X.dtype, device=X.device)
    for i in range(out_h):
        for j in range(out_w):
            window = X[i * s_h:i * s_h + p_h, j * s_w:j * s_w + p_w]
            Y[i, j] = window.max() if mode == "max" else window.mean()
    return Y


def pool2d(X: torch.Tensor, pool_size: IntPair, mode: str = "max", padding: Padding = 0,
           stride: IntPair = 1) -> torch.Tensor:
    """Max or average pooling over the last two dimensions of ``X`` (..., h, w), vectorised.

    Works on (h, w), (c, h, w) and (n, c, h, w) alike; channels are pooled independently.
    Padding follows PyTorch (see :func:`pool2d_loop`), so results equal ``F.max_pool2d`` /
    ``F.avg_pool2d``.  The default stride is 1, as in the book's ``pool2d``; note that
    ``nn.MaxPool2d`` and ``nn.AvgPool2d`` default the stride to the pool size instead.
    """
    size, sides = _check_pool_args(X, pool_size, mode, padding)
    pad_value = float("-inf") if mode == "max" else 0.0
    windows = _windows(X, size, sides, stride, pad_value)         # (..., out_h, out_w, p_h, p_w)
    if mode == "max":
        return windows.amax(dim=(-2, -1))
    return windows.mean(dim=(-2, -1))
