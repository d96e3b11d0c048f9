"""The edge-detection experiment, translation, parameter counts, and `cnnlab demo edges`."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab.cli.main as cli_main
from cnnlab.demos import edge_detection_demo, edge_exercises, parameter_counts, translation_shift_difference

TARGET = torch.tensor([[1.0, -1.0]])


def test_edges_are_found_where_the_band_begins_and_ends():
    result = edge_detection_demo()
    X = torch.ones(6, 8)
    X[:, 2:6] = 0
    assert torch.equal(result.image, X)
    expected = torch.zeros(6, 7)
    expected[:, 1] = 1    # light column 1 -> dark column 2
    expected[:, 5] = -1   # dark column 5 -> light column 6
    assert torch.equal(result.edges, expected)
    assert torch.equal(result.edges, F.conv2d(X[None, None], TARGET[None, None])[0, 0])
    assert result.edges_transposed.shape == (8, 5)
    assert not result.edges_transposed.any()


def test_learning_the_kernel_matches_the_books_nn_conv2d_loop():
    """Our Conv2D and the book's nn.Conv2d code, from the same start, end with the same kernel."""
    result = edge_detection_demo(lr=3e-2, steps=10, seed=0)
    start = torch.rand((1, 2), generator=torch.Generator().manual_seed(0))  # Conv2D's seeded start
    conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    with torch.no_grad():
        conv2d.weight.copy_(start.reshape(1, 1, 1, 2))
    X, Y = result.image.reshape(1, 1, 6, 8), result.edges.reshape(1, 1, 6, 7)
    book_losses = []
    for i in range(10):
        l = (conv2d(X) - Y) ** 2  # noqa: E741 - the book's name
        conv2d.zero_grad()
        l.sum().backward()
        conv2d.weight.data[:] -= 3e-2 * conv2d.weight.grad
        if (i + 1) % 2 == 0:
            book_losses.append((i + 1, l.sum().item()))
    assert [step for step, _ in result.losses] == [2, 4, 6, 8, 10]
    for (_, ours), (_, book) in zip(result.losses, book_losses):
        assert ours == pytest.approx(book, rel=1e-5)
    torch.testing.assert_close(result.learned_kernel, conv2d.weight.detach().reshape(1, 2))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_learned_kernel_approaches_one_minus_one(seed):
    book = edge_detection_demo(seed=seed)
    assert (book.learned_kernel - TARGET).abs().max() < 0.1
    losses = [loss for _, loss in book.losses]
    assert losses == sorted(losses, reverse=True)
    longer = edge_detection_demo(steps=30, seed=seed)
    assert (longer.learned_kernel - TARGET).abs().max() < 0.01


def test_the_sections_exercises_against_hand_computed_maps():
    """d2l 6.2's exercises on X, a 6x8 image light on and below its diagonal (X[i, j] = 1 for j <= i)."""
    ex = edge_exercises()
    X = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0, 0, 0, 0],
                      [1, 1, 1, 0, 0, 0, 0, 0],
                      [1, 1, 1, 1, 0, 0, 0, 0],
                      [1, 1, 1, 1, 1, 0, 0, 0],
                      [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(ex.image, X)
    # [[1, -1]]: X[i, j] - X[i, j + 1] is 1 where row i steps from light to dark, at j = i.
    assert torch.equal(ex.edges, torch.tensor([[1, 0, 0, 0, 0, 0, 0],
                                               [0, 1, 0, 0, 0, 0, 0],
                                               [0, 0, 1, 0, 0, 0, 0],
                                               [0, 0, 0, 1, 0, 0, 0],
                                               [0, 0, 0, 0, 1, 0, 0],
                                               [0, 0, 0, 0, 0, 1, 0]], dtype=torch.float32))
    # X.T is light on and above the diagonal: rows step from dark to light, -1 at j = i - 1; its last two
    # rows (X's dark columns 6 and 7) have no edge.
    expected = torch.zeros(8, 5)
    for i in range(1, 6):
        expected[i, i - 1] = -1
    assert torch.equal(ex.edges_transposed_image, expected)
    # K.T = [[1], [-1]]: X[i, j] - X[i + 1, j] is -1 where column j steps from dark to light, at i = j - 1.
    assert torch.equal(ex.transposed_kernel, torch.tensor([[0, -1, 0, 0, 0, 0, 0, 0],
                                                           [0, 0, -1, 0, 0, 0, 0, 0],
                                                           [0, 0, 0, -1, 0, 0, 0, 0],
                                                           [0, 0, 0, 0, -1, 0, 0, 0],
                                                           [0, 0, 0, 0, 0, -1, 0, 0]], dtype=torch.float32))
    assert torch.equal(ex.both_transposed, torch.eye(7, 6))   # corr2d(X, K).T
    # The band image (columns 2-5 dark): K.T sees no vertical edge; on the transposed band it finds both.
    assert torch.equal(ex.band_transposed_kernel, torch.zeros(5, 8))
    band_edges = torch.zeros(7, 6)
    band_edges[1], band_edges[5] = 1, -1
    assert torch.equal(ex.band_both_transposed, band_edges)
    # [[1, -1], [-1, 1]]: 1 on the diagonal, -1 beside it; nothing on the band's vertical edges.
    assert torch.equal(ex.diagonal_edges, torch.tensor([[1, -1, 0, 0, 0, 0, 0],
                                                        [0, 1, -1, 0, 0, 0, 0],
                                                        [0, 0, 1, -1, 0, 0, 0],
                                                        [0, 0, 0, 1, -1, 0, 0],
                                                        [0, 0, 0, 0, 1, -1, 0]], dtype=torch.float32))
    assert torch.equal(ex.band_diagonal_kernel, torch.zeros(5, 7))
    # The same maps as PyTorch's own convolution (cross-correlation) gives.
    K = torch.tensor([[1.0, -1.0]])
    for image, kernel, result in ((X, K, ex.edges), (X.T, K, ex.edges_transposed_image), (X, K.T, ex.transposed_kernel),
                                  (X, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), ex.diagonal_edges)):
        assert torch.equal(F.conv2d(image[None, None], kernel[None, None])[0, 0], result)


def test_demo_prints_through_print_fn_and_is_silent_without_it(capsys):
    lines = []
    edge_detection_demo(steps=4, print_fn=lines.append)
    assert [line for line in lines if line.startswith("epoch")][0].startswith("epoch 2, loss ")
    edge_detection_demo(steps=4)
    assert capsys.readouterr().out == ""


def test_translation_shift_difference_is_zero_for_corr2d():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(10, 12, generator=g, dtype=torch.float64)
    K = torch.rand(3, 2, generator=g, dtype=torch.float64)
    for shift in [(0, 0), (1, 0), (0, 3), (2, 4)]:
        assert translation_shift_difference(X, K, shift) == 0.0
    with pytest.raises(ValueError, match="shift must be zero or positive"):
        translation_shift_difference(X, K, (-1, 0))


@pytest.mark.parametrize("shape, out_channels, kernel, padding", [
    ((1, 28, 28), 6, 5, 2),
    ((6, 14, 14), 16, 5, 0),
    ((3, 32, 32), 8, 3, 1),
    ((1, 1000, 1000), 1, 5, 2),
])
def test_parameter_counts_equal_torch_layers(shape, out_channels, kernel, padding):
    count = parameter_counts(*shape, out_channels, kernel, padding)
    conv = nn.Conv2d(shape[0], out_channels, kernel, padding=padding, device="meta")
    out = conv(torch.empty(1, *shape, device="meta")).shape[1:]
    linear = nn.Linear(shape[0] * shape[1] * shape[2], out.numel(), device="meta")
    assert count.output_shape == tuple(out)
    assert count.convolutional == sum(p.numel() for p in conv.parameters())
    assert count.fully_connected == sum(p.numel() for p in linear.parameters())


@pytest.fixture
def cnnlab(monkeypatch):
    """Runs `cnnlab ...` in-process with only the demo command registered (other commands are
    separate modules with their own tests)."""
    assert "cnnlab.cli.demo" in cli_main.COMMAND_MODULES
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["cnnlab.cli.demo"])
    return cli_main.main


def test_cli_demo_edges_prints_edges_losses_kernel_and_parameter_counts(cnnlab, capsys):
    assert cnnlab(["demo", "edges"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^epoch (\d+), loss \d+\.\d{3}$", out, re.M) == ["2", "4", "6", "8", "10"]
    learned = re.search(r"^learned kernel: \[\[(\S+), (\S+)\]\]$", out, re.M)
    assert abs(float(learned.group(1)) - 1) < 0.1 and abs(float(learned.group(2)) + 1) < 0.1
    assert "   0  1  0  0  0 -1  0" in out
    exercises = out[out.index("Exercises (d2l 6.2)"):]
    assert "1. corr2d(X, K) with K = [[1, -1]]" in exercises and "2. corr2d(X.T, K)" in exercises
    assert "3. corr2d(X, K.T) with K.T = [[1], [-1]]" in exercises
    assert "  1 0 0 0 0 0 0\n  0 1 0 0 0 0 0\n" in exercises                     # K on the diagonal edge
    assert "   0 -1  0  0  0  0  0  0\n   0  0 -1  0  0  0  0  0\n" in exercises   # K.T on it
    assert "   1 -1  0  0  0  0  0\n   0  1 -1  0  0  0  0\n" in exercises         # D on it
    assert "D = [[1, -1], [-1, 1]]" in exercises
    assert "largest difference away from the border: 0)" in out
    assert "fully connected 3,692,640 parameters, convolutional 156" in out


def test_cli_demo_edges_flags(cnnlab, capsys):
    assert cnnlab(["demo", "edges", "--steps", "30", "--lr", "0.03", "--seed", "3", "--print-every", "5"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^epoch (\d+),", out, re.M) == ["5", "10", "15", "20", "25", "30"]
    learned = re.search(r"^learned kernel: \[\[(\S+), (\S+)\]\]$", out, re.M)
    assert abs(float(learned.group(1)) - 1) < 0.01 and abs(float(learned.group(2)) + 1) < 0.01


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "error: steps must be at least 1, not 0"),
    (["--lr", "-1"], "error: learning rate must be positive and finite, not -1.0"),
    (["--lr", "inf"], "error: learning rate must be positive and finite, not inf"),
    (["--lr", "nan"], "error: learning rate must be positive and finite, not nan"),
])
def test_cli_demo_edges_bad_flags_exit_2_with_one_line(cnnlab, capsys, flags, message):
    assert cnnlab(["demo", "edges", *flags]) == 2
    assert capsys.readouterr().err.strip() == message
