"""The experiments of d2l 6.1-6.2 as functions that return their numbers.

* :func:`edge_detection_demo`: a 6x8 image with a dark band; the kernel ``[[1, -1]]`` finds its
  vertical edges, finds nothing on the transposed image, and can be learned back from
  ``(X, Y)`` by gradient descent (d2l 6.2.3-6.2.4).
* :func:`edge_exercises`: the section's exercises (d2l 6.2.7): the kernel on an image with a
  diagonal edge, on its transpose, the transposed kernel, and a kernel that sees only the diagonal.
* :func:`translation_shift_difference`: shifting the input shifts the output of ``corr2d`` by
  the same amount (away from the borders) -- translation equivariance made concrete.
* :func:`parameter_counts`: how many parameters a fully connected layer and a convolutional
  layer need for the same input and output shapes -- the argument of d2l 6.1.

Every function computes silently unless given ``print_fn`` (``print`` or any callable taking one
string), so tests read the numbers and the command line prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from cnnlab import ops
from cnnlab.errors import ConfigError
from cnnlab.layers import Conv2D
from cnnlab.text import display_width, pad

PrintFn = Optional[Callable[[str], None]]


def format_matrix(t: torch.Tensor, decimals: int = 0) -> str:
    """A 2-D tensor as right-aligned rows of numbers, easier to read than ``repr``."""
    cells = [[f"{float(v):.{decimals}f}" for v in row] for row in t.detach().cpu()]
    cells = [["0" if c in ("-0", "-0." + "0" * decimals) else c for c in row] for row in cells]
    width = max(display_width(c) for row in cells for c in row)
    return "\n".join("  " + " ".join(pad(c, width, ">") for c in row) for row in cells)


# --------------------------------------------------------------------------- edge detection


def edge_image(height: int = 6, width: int = 8, band: tuple[int, int] = (2, 6)) -> torch.Tensor:
    """The book's test image: ones (light) with a band of zeros (dark) in columns ``band``."""
    X = torch.ones((height, width))
    X[:, band[0]:band[1]] = 0
    return X


@dataclass(frozen=True)
class EdgeDemoResult:
    image: torch.Tensor              # X, (6, 8)
    kernel: torch.Tensor             # K = [[1, -1]]
    edges: torch.Tensor              # corr2d(X, K), (6, 7)
    edges_transposed: torch.Tensor   # corr2d(X.T, K), (8, 5): all zeros
    losses: list[tuple[int, float]]  # (iteration, summed squared error) every print_every iterations
    learned_kernel: torch.Tensor     # (1, 2), close to [[1, -1]]


def edge_detection_demo(lr: float = 3e-2, steps: int = 10, seed: int = 0, print_every: int = 2,
                        print_fn: PrintFn = None) -> EdgeDemoResult:
    """Detect the image's vertical edges with ``[[1, -1]]``, then learn that kernel back.

    The learning half follows d2l 6.2.4: a (1, 2) kernel without bias, started from a seeded
    ``torch.rand``, trained by plain gradient descent on the summed squared error between
    ``Conv2D(X)`` and the edge map ``Y``.  With the book's lr 0.03 and 10 iterations the kernel
    ends near ``[[1.05, -0.93]]``; more steps bring it closer to ``[[1, -1]]``.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, not {steps}")
    if not 0 < lr < float("inf"):   # NaN fails too; inf printed a nan kernel
        raise ConfigError(f"learning rate must be positive and finite, not {lr}")
    if print_every < 1:
        raise ConfigError(f"print_every must be at least 1, not {print_every}")
    say = print_fn or (lambda _line: None)

    X = edge_image()
    K = torch.tensor([[1.0, -1.0]])
    Y = ops.corr2d(X, K)
    Y_transposed = ops.corr2d(X.t(), K)
    say("Image X (6x8): light (1) with a dark band (0) in columns 2-5")
    say(format_matrix(X))
    say("Y = corr2d(X, K) with K = [[1, -1]]: 1 marks a light-to-dark edge, -1 dark-to-light")
    say(format_matrix(Y))
    say("corr2d(X.T, K): the same kernel on the transposed image sees no edge (horizontal edges are missed)")
    say(format_matrix(Y_transposed))

    generator = torch.Generator().manual_seed(seed)
    layer = Conv2D((1, 2), bias=False, generator=generator)
    say(f"Learning K back from (X, Y): Conv2D((1, 2), bias=False), start {format_kernel(layer.weight)}, "
        f"lr {lr:g}, {steps} iterations, summed squared error")
    losses: list[tuple[int, float]] = []
    for i in range(steps):
        loss = ((layer(X) - Y) ** 2).sum()
        layer.zero_grad()
        loss.backward()
        with torch.no_grad():
            layer.weight -= lr * layer.weight.grad
        if (i + 1) % print_every == 0:
            losses.append((i + 1, loss.item()))
            say(f"epoch {i + 1}, loss {loss.item():.3f}")
    learned = layer.weight.detach().clone()
    say(f"learned kernel: {format_kernel(learned)}")
    return EdgeDemoResult(X, K, Y, Y_transposed, losses, learned)


def format_kernel(K: torch.Tensor) -> str:
    rows = ", ".join("[" + ", ".join(f"{float(v):.4f}" for v in row) + "]" for row in K.detach())
    return f"[{rows}]"


# --------------------------------------------------------------------------- the section's exercises


def diagonal_image(height: int = 6, width: int = 8) -> torch.Tensor:
    """An image with a diagonal edge: light (1) on and below the diagonal, dark (0) above it."""
    return torch.ones((height, width)).tril()


DIAGONAL_KERNEL = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
"""Each of its rows and columns sums to zero, so it gives 0 on vertical and on horizontal edges and
answers only where brightness changes along both axes at once: along a diagonal edge."""


@dataclass(frozen=True)
class EdgeExercises:
    image: torch.Tensor                # X, (6, 8): a diagonal edge
    edges: torch.Tensor                # corr2d(X, K), (6, 7)
    edges_transposed_image: torch.Tensor   # corr2d(X.T, K), (8, 5)
    transposed_kernel: torch.Tensor    # corr2d(X, K.T), (5, 8)
    both_transposed: torch.Tensor      # corr2d(X.T, K.T), (7, 6): corr2d(X, K).T
    band_transposed_kernel: torch.Tensor   # corr2d(band, K.T), (5, 8): the band's vertical edges unseen
    band_both_transposed: torch.Tensor     # corr2d(band.T, K.T), (7, 6): the band's edges, transposed
    diagonal_edges: torch.Tensor       # corr2d(X, DIAGONAL_KERNEL), (5, 7)
    band_diagonal_kernel: torch.Tensor     # corr2d(band, DIAGONAL_KERNEL), (5, 7): all zeros


def edge_exercises(print_fn: PrintFn = None) -> EdgeExercises:
    """The exercises of d2l 6.2: an image with a diagonal edge under ``K = [[1, -1]]``, transposing the
    image, transposing the kernel, and a kernel that detects the diagonal edge alone."""
    say = print_fn or (lambda _line: None)
    X, band = diagonal_image(), edge_image()
    K = torch.tensor([[1.0, -1.0]])
    result = EdgeExercises(
        image=X, edges=ops.corr2d(X, K), edges_transposed_image=ops.corr2d(X.t(), K),
        transposed_kernel=ops.corr2d(X, K.t()), both_transposed=ops.corr2d(X.t(), K.t()),
        band_transposed_kernel=ops.corr2d(band, K.t()), band_both_transposed=ops.corr2d(band.t(), K.t()),
        diagonal_edges=ops.corr2d(X, DIAGONAL_KERNEL), band_diagonal_kernel=ops.corr2d(band, DIAGONAL_KERNEL))
    for caption, matrix in (
            ("Exercises (d2l 6.2): an image X (6x8) with a diagonal edge, light on and below the diagonal", X),
            ("1. corr2d(X, K) with K = [[1, -1]]: every row crosses the edge, so K marks it, one step per row",
             result.edges),
            ("2. corr2d(X.T, K): the transposed image's edge runs dark-to-light, so K marks it with -1",
             result.edges_transposed_image),
            ("3. corr2d(X, K.T) with K.T = [[1], [-1]]: the transposed kernel compares each row with the next,\n"
             "   so it finds horizontal edges; here the diagonal's, one step per column", result.transposed_kernel),
            ("   corr2d(X.T, K.T) is corr2d(X, K).T", result.both_transposed),
            ("   On the band image, K.T sees none of its vertical edges, corr2d(band, K.T):",
             result.band_transposed_kernel),
            ("   and corr2d(band.T, K.T) finds them, transposed:", result.band_both_transposed),
            ("A kernel for the diagonal edge alone: D = [[1, -1], [-1, 1]]. Its rows and columns sum to 0,\n"
             "so vertical and horizontal edges give 0; corr2d(X, D):", result.diagonal_edges),
            ("   and on the band image, whose edges are vertical, corr2d(band, D):", result.band_diagonal_kernel)):
        say(caption)
        say(format_matrix(matrix))
    return result


# --------------------------------------------------------------------------- translation


def translation_shift_difference(X: torch.Tensor, K: torch.Tensor, shift: tuple[int, int]) -> float:
    """Largest difference between ``corr2d(shifted X, K)`` and ``corr2d(X, K)`` shifted the same way.

    ``shift = (rows down, columns right)``, both zero or positive.  The shifted image is
    ``torch.roll`` of ``X``; outputs whose window touches the rows or columns that wrapped
    around are left out, so the result is exactly 0 for a translation-equivariant operator.
    """
    d_r, d_c = shift
    if d_r < 0 or d_c < 0:
        raise ConfigError(f"shift must be zero or positive in both directions, not {shift}")
    Y = ops.corr2d(X, K)
    if d_r >= Y.shape[0] or d_c >= Y.shape[1]:
        raise ConfigError(f"shift {shift} leaves no output of shape {tuple(Y.shape)} away from the border")
    Y_shifted_input = ops.corr2d(torch.roll(X, shifts=(d_r, d_c), dims=(0, 1)), K)
    # Output (i, j) of the shifted image sees input rows i-d_r.. and columns j-d_c.. of X.
    interior = Y_shifted_input[d_r:, d_c:]
    expected = Y[:Y.shape[0] - d_r, :Y.shape[1] - d_c]
    return (interior - expected).abs().max().item()


# --------------------------------------------------------------------------- parameter counts


@dataclass(frozen=True)
class ParameterCount:
    input_shape: tuple[int, int, int]    # (channels, height, width)
    output_shape: tuple[int, int, int]   # (channels, height, width)
    kernel_size: tuple[int, int]
    fully_connected: int                 # weights + biases of nn.Linear(prod(input), prod(output))
    convolutional: int                   # weights + biases of nn.Conv2d with that kernel

    def describe(self) -> str:
        c, h, w = self.input_shape
        o, oh, ow = self.output_shape
        k_h, k_w = self.kernel_size
        return (f"{c}x{h}x{w} -> {o}x{oh}x{ow} ({k_h}x{k_w} kernel): fully connected "
                f"{self.fully_connected:,} parameters, convolutional {self.convolutional:,} "
                f"({self.fully_connected / self.convolutional:,.0f} times fewer)")


def parameter_counts(in_channels: int, height: int, width: int, out_channels: int,
                     kernel_size: ops.IntPair, padding: ops.Padding = 0, stride: ops.IntPair = 1,
                     bias: bool = True) -> ParameterCount:
    """Parameters of a fully connected and a convolutional layer with the same input and output shapes.

    A fully connected layer gives every output value its own weight for every input value; a
    convolutional layer shares one small kernel per (output, input) channel pair across all
    positions (locality plus translation invariance, d2l 6.1).
    """
    k_h, k_w = ops.normalize_pair(kernel_size, "kernel size")
    out_h, out_w = ops.output_shape((height, width), (k_h, k_w), padding, stride)
    n_in = in_channels * height * width
    n_out = out_channels * out_h * out_w
    fully_connected = n_in * n_out + (n_out if bias else 0)
    convolutional = out_channels * in_channels * k_h * k_w + (out_channels if bias else 0)
    return ParameterCount((in_channels, height, width), (out_channels, out_h, out_w), (k_h, k_w),
                          fully_connected, convolutional)


# The comparisons the command line prints: LeNet's first layer on a 28x28 image, and the book's
# one-megapixel image.
PARAMETER_EXAMPLES = (
    dict(in_channels=1, height=28, width=28, out_channels=6, kernel_size=5, padding=2),
    dict(in_channels=1, height=1000, width=1000, out_channels=1, kernel_size=5, padding=2),
)


def run_edges_demo(lr: float = 3e-2, steps: int = 10, seed: int = 0, print_every: int = 2,
                   print_fn: PrintFn = print) -> tuple[EdgeDemoResult, float, list[ParameterCount]]:
    """Everything ``cnnlab demo edges`` shows: edges, learning, the section's exercises, translation,
    parameter counts."""
    say = print_fn or (lambda _line: None)
    result = edge_detection_demo(lr=lr, steps=steps, seed=seed, print_every=print_every, print_fn=print_fn)
    edge_exercises(print_fn=print_fn)
    shift_difference = translation_shift_difference(result.image, result.kernel, (0, 1))
    say("Translation: moving the image one column right moves the edge map one column right "
        f"(largest difference away from the border: {shift_difference:g})")
    counts = [parameter_counts(**example) for example in PARAMETER_EXAMPLES]
    say("Parameters for the same input and output shapes:")
    for count in counts:
        say("  " + count.describe())
    return result, shift_difference, counts
