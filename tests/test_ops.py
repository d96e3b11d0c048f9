"""cnnlab.ops against PyTorch's own operators, the book's hand-worked examples, and autograd.

Every property test draws shapes, channels, kernel sizes, per-side padding and strides, and
compares with ``torch.nn.functional`` (conv2d, max_pool2d, avg_pool2d) within 1e-5 in float32
and 1e-10 in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab import ops

PROPERTY = settings(max_examples=40, deadline=None)
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    tol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def uniform(generator: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1


@st.composite
def geometries(draw, max_kernel: int = 4, max_stride: int = 3, max_pad: int = 2, max_extra: int = 6):
    """Kernel, per-side padding, stride and an input size the padded input can hold."""
    k_h, k_w = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    top, bottom, left, right = (draw(st.integers(0, max_pad)) for _ in range(4))
    s_h, s_w = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
    h = max(1, k_h - top - bottom) + draw(st.integers(0, max_extra))
    w = max(1, k_w - left - right) + draw(st.integers(0, max_extra))
    return dict(size=(h, w), kernel=(k_h, k_w), padding=(top, bottom, left, right), stride=(s_h, s_w))


dtypes = st.sampled_from([torch.float32, torch.float64])
seeds = st.integers(0, 2**31 - 1)


def reference_conv(X: torch.Tensor, K: torch.Tensor, padding, stride, bias=None) -> torch.Tensor:
    """F.conv2d on a (n, c, h, w) input; per-side padding applied by F.pad first."""
    top, bottom, left, right = padding
    return F.conv2d(F.pad(X, (left, right, top, bottom)), K, bias=bias, stride=stride)


# --------------------------------------------------------------------------- the book's examples


BOOK_X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])


@pytest.mark.parametrize("corr", [ops.corr2d, ops.corr2d_loop])
def test_corr2d_book_example(corr):
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    # d2l 6.2.1: 0*0 + 1*1 + 3*2 + 4*3 = 19, and so on.
    assert corr(BOOK_X, K).tolist() == [[19.0, 25.0], [37.0, 43.0]]


def test_corr2d_multi_in_book_example():
    X = torch.stack([BOOK_X, BOOK_X + 1])
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    assert ops.corr2d_multi_in(X, K).tolist() == [[56.0, 72.0], [104.0, 120.0]]
    K3 = torch.stack([K, K + 1, K + 2])
    assert ops.corr2d_multi_in_out(X, K3).tolist() == [
        [[56.0, 72.0], [104.0, 120.0]], [[76.0, 100.0], [148.0, 172.0]], [[96.0, 128.0], [192.0, 224.0]]]


@pytest.mark.parametrize("pool", [ops.pool2d, ops.pool2d_loop])
def test_pool2d_book_example(pool):
    assert pool(BOOK_X, (2, 2)).tolist() == [[4.0, 5.0], [7.0, 8.0]]
    assert pool(BOOK_X, (2, 2), "avg").tolist() == [[2.0, 3.0], [5.0, 6.0]]


@pytest.mark.parametrize("size, kernel, padding, stride, expected", [
    ((8, 8), (3, 3), 1, 1, (8, 8)),            # d2l 6.3.1: padding keeps the shape
    ((8, 8), (5, 3), (2, 1), 1, (8, 8)),
    ((8, 8), (3, 3), 1, 2, (4, 4)),            # d2l 6.3.2: stride 2 halves it
    ((8, 8), (3, 5), (0, 1), (3, 4), (2, 2)),
    ((28, 28), (5, 5), 2, 1, (28, 28)),        # LeNet's first convolution
    ((5, 5), (2, 2), (0, 1, 0, 0), 2, (3, 2)),  # one extra row at the bottom
])
def test_output_shape_book_examples(size, kernel, padding, stride, expected):
    assert ops.output_shape(size, kernel, padding, stride) == expected


def test_padding_forms():
    assert ops.normalize_padding(1) == (1, 1, 1, 1)
    assert ops.normalize_padding((2, 1)) == (2, 2, 1, 1)
    assert ops.normalize_padding((0, 1, 2, 3)) == (0, 1, 2, 3)


# --------------------------------------------------------------------------- against PyTorch


@PROPERTY
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 8), st.integers(1, 8),
       st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.integers(1, 4))
def test_output_shape_agrees_with_nn_conv2d(h, w, k_h, k_w, p_h, p_w, s_h, s_w):
    if k_h > h + 2 * p_h or k_w > w + 2 * p_w:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.output_shape((h, w), (k_h, k_w), (p_h, p_w), (s_h, s_w))
        return
    conv = torch.nn.Conv2d(1, 1, (k_h, k_w), stride=(s_h, s_w), padding=(p_h, p_w), bias=False)
    with torch.no_grad():
        produced = tuple(conv(torch.zeros(1, 1, h, w)).shape[-2:])
    assert ops.output_shape((h, w), (k_h, k_w), (p_h, p_w), (s_h, s_w)) == produced


@PROPERTY
@given(geometries(), dtypes, seeds)
def test_corr2d_equals_conv2d(geometry, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, *geometry["size"], dtype=dtype)
    K = uniform(g, *geometry["kernel"], dtype=dtype)
    expected = reference_conv(X[None, None], K[None, None], geometry["padding"], geometry["stride"])[0, 0]
    assert_matches(ops.corr2d(X, K, geometry["padding"], geometry["stride"]), expected)
    assert_matches(ops.corr2d_loop(X, K, geometry["padding"], geometry["stride"]), expected)


@PROPERTY
@given(geometries(), st.integers(1, 4), st.integers(1, 4), dtypes, seeds)
def test_multi_channel_corr2d_equals_conv2d(geometry, c_in, c_out, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, c_in, *geometry["size"], dtype=dtype)
    K = uniform(g, c_out, c_in, *geometry["kernel"], dtype=dtype)
    padding, stride = geometry["padding"], geometry["stride"]
    expected = reference_conv(X[None], K, padding, stride)[0]
    assert_matches(ops.corr2d_multi_in_out(X, K, padding, stride), expected)
    assert_matches(ops.corr2d_multi_in(X, K[0], padding, stride), expected[0])


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 7), st.integers(1, 7), dtypes, seeds)
def test_1x1_convolution_as_matmul_equals_conv2d(c_in, c_out, h, w, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, c_in, h, w, dtype=dtype)
    K = uniform(g, c_out, c_in, 1, 1, dtype=dtype)
    assert_matches(ops.corr2d_multi_in_out_1x1(X, K), F.conv2d(X[None], K)[0])


@PROPERTY
@given(geometries(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans(), dtypes, seeds)
def test_batched_conv2d_equals_conv2d(geometry, n, c_in, c_out, with_bias, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, n, c_in, *geometry["size"], dtype=dtype)
    K = uniform(g, c_out, c_in, *geometry["kernel"], dtype=dtype)
    bias = uniform(g, c_out, dtype=dtype) if with_bias else None
    padding, stride = geometry["padding"], geometry["stride"]
    assert_matches(ops.conv2d(X, K, bias, padding, stride), reference_conv(X, K, padding, stride, bias))


@PROPERTY
@given(geometries(), st.integers(0, 2), st.integers(0, 2), dtypes, seeds)
def test_symmetric_padding_equals_conv2d_padding(geometry, p_h, p_w, dtype, seed):
    """(ph, pw) means what nn.Conv2d's padding means: ph rows on top and bottom, pw columns each side."""
    g = torch.Generator().manual_seed(seed)
    k_h, k_w = geometry["kernel"]
    h, w = k_h + geometry["size"][0], k_w + geometry["size"][1]
    X = uniform(g, 2, 2, h, w, dtype=dtype)
    K = uniform(g, 3, 2, k_h, k_w, dtype=dtype)
    expected = F.conv2d(X, K, stride=geometry["stride"], padding=(p_h, p_w))
    assert_matches(ops.conv2d(X, K, padding=(p_h, p_w), stride=geometry["stride"]), expected)


@st.composite
def pool_geometries(draw):
    """PyTorch allows pooling padding of at most half the window on each side."""
    p_h, p_w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pad_h, pad_w = draw(st.integers(0, p_h // 2)), draw(st.integers(0, p_w // 2))
    s_h, s_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = max(1, p_h - 2 * pad_h) + draw(st.integers(0, 6))
    w = max(1, p_w - 2 * pad_w) + draw(st.integers(0, 6))
    return dict(size=(h, w), pool=(p_h, p_w), padding=(pad_h, pad_w), stride=(s_h, s_w))


@PROPERTY
@given(pool_geometries(), st.integers(1, 2), st.integers(1, 3), dtypes, seeds)
def test_pool2d_equals_torch_pooling(geometry, n, c, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, n, c, *geometry["size"], dtype=dtype)
    kw = dict(padding=geometry["padding"], stride=geometry["stride"])
    expected_max = F.max_pool2d(X, geometry["pool"], **kw)
    expected_avg = F.avg_pool2d(X, geometry["pool"], count_include_pad=True, **kw)
    assert_matches(ops.pool2d(X, geometry["pool"], "max", **kw), expected_max)
    assert_matches(ops.pool2d(X, geometry["pool"], "avg", **kw), expected_avg)
    # The loop takes one (h, w) image; it must agree on the first.
    assert_matches(ops.pool2d_loop(X[0, 0], geometry["pool"], "max", **kw), expected_max[0, 0])
    assert_matches(ops.pool2d_loop(X[0, 0], geometry["pool"], "avg", **kw), expected_avg[0, 0])


@PROPERTY
@given(geometries(max_pad=3), dtypes, seeds)
def test_pool2d_per_side_padding(geometry, dtype, seed):
    """Per-side padding: max pads with -inf, avg with zeros that count in the mean."""
    k_h, k_w = geometry["kernel"]
    top, bottom, left, right = (min(p, k - 1) for p, k in zip(geometry["padding"], (k_h, k_h, k_w, k_w)))
    h = max(1, k_h - top - bottom) + geometry["size"][0] - 1
    w = max(1, k_w - left - right) + geometry["size"][1] - 1
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, 2, h, w, dtype=dtype)
    sides, stride = (top, bottom, left, right), geometry["stride"]
    lrtb = (left, right, top, bottom)
    expected_max = F.max_pool2d(F.pad(X, lrtb, value=float("-inf")), (k_h, k_w), stride=stride)
    expected_avg = F.avg_pool2d(F.pad(X, lrtb), (k_h, k_w), stride=stride)
    assert_matches(ops.pool2d(X, (k_h, k_w), "max", sides, stride), expected_max)
    assert_matches(ops.pool2d(X, (k_h, k_w), "avg", sides, stride), expected_avg)


# --------------------------------------------------------------------------- locality, translation


@PROPERTY
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 4), st.integers(0, 4), seeds)
def test_shifting_the_input_shifts_the_output(k_h, k_w, d_r, d_c, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, k_h + d_r + 5, k_w + d_c + 5, dtype=torch.float64)
    K = uniform(g, k_h, k_w, dtype=torch.float64)
    Y = ops.corr2d(X, K)
    shifted = torch.roll(X, shifts=(d_r, d_c), dims=(0, 1))
    Y_shifted = ops.corr2d(shifted, K)
    # Away from the rows/columns that wrapped around, output (i, j) of the shifted image is
    # output (i - d_r, j - d_c) of the original.
    torch.testing.assert_close(Y_shifted[d_r:, d_c:], Y[:Y.shape[0] - d_r, :Y.shape[1] - d_c],
                               atol=1e-12, rtol=0)


@PROPERTY
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 8), st.integers(0, 8), seeds)
def test_changing_one_pixel_changes_only_outputs_within_kernel_reach(k_h, k_w, r, c, seed):
    g = torch.Generator().manual_seed(seed)
    X = uniform(g, 9, 9, dtype=torch.float64)
    K = uniform(g, k_h, k_w, dtype=torch.float64) + 3  # no zero weights, so every reachable output moves
    X2 = X.clone()
    X2[r, c] += 1.0
    changed = (ops.corr2d(X2, K) - ops.corr2d(X, K)).abs() > 1e-9
    rows = torch.arange(changed.shape[0])[:, None]
    cols = torch.arange(changed.shape[1])[None, :]
    reach = (rows <= r) & (rows > r - k_h) & (cols <= c) & (cols > c - k_w)
    assert torch.equal(changed, reach)


# --------------------------------------------------------------------------- gradients


def gradcheck(fn, *inputs) -> None:
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def leaf(g, *shape):
    return uniform(g, *shape, dtype=torch.float64).requires_grad_()


@settings(max_examples=15, deadline=None)
@given(geometries(max_kernel=3, max_stride=2, max_pad=1, max_extra=3), st.integers(1, 2), st.integers(1, 2), seeds)
def test_vectorised_conv_gradients(geometry, c_in, c_out, seed):
    g = torch.Generator().manual_seed(seed)
    padding, stride = geometry["padding"], geometry["stride"]
    X = leaf(g, 1, c_in, *geometry["size"])
    K = leaf(g, c_out, c_in, *geometry["kernel"])
    b = leaf(g, c_out)
    gradcheck(lambda x, k, bias: ops.conv2d(x, k, bias, padding, stride), X, K, b)
    gradcheck(lambda x, k: ops.corr2d(x, k, padding, stride), X[0, 0].detach().requires_grad_(),
              K[0, 0].detach().requires_grad_())
    gradcheck(lambda x, k: ops.corr2d_multi_in_out(x, k, padding, stride), X[0].detach().requires_grad_(), K)


@settings(max_examples=15, deadline=None)
@given(pool_geometries(), seeds)
def test_vectorised_pool_gradients(geometry, seed):
    g = torch.Generator().manual_seed(seed)
    X = leaf(g, 1, 2, *geometry["size"])
    kw = dict(padding=geometry["padding"], stride=geometry["stride"])
    gradcheck(lambda x: ops.pool2d(x, geometry["pool"], "max", **kw), X)
    gradcheck(lambda x: ops.pool2d(x, geometry["pool"], "avg", **kw), X)


def test_loop_and_small_functions_gradients():
    g = torch.Generator().manual_seed(0)
    gradcheck(lambda x, k: ops.corr2d_loop(x, k, (1, 0, 0, 1), (2, 1)), leaf(g, 4, 5), leaf(g, 2, 3))
    gradcheck(lambda x, k: ops.corr2d_multi_in(x, k, 1), leaf(g, 2, 3, 4), leaf(g, 2, 2, 2))
    gradcheck(ops.corr2d_multi_in_out_1x1, leaf(g, 3, 2, 3), leaf(g, 2, 3, 1, 1))
    gradcheck(lambda x: ops.pool2d_loop(x, 2, "max", 1, 2), leaf(g, 4, 5))


def test_gradients_match_torch():
    """Beyond numerical checks: the same gradients as F.conv2d for a LeNet-sized layer."""
    g = torch.Generator().manual_seed(1)
    X, K, b = leaf(g, 3, 2, 12, 12), leaf(g, 4, 2, 5, 5), leaf(g, 4)
    upstream = uniform(g, 3, 4, 12, 12, dtype=torch.float64)
    ours = torch.autograd.grad((ops.conv2d(X, K, b, padding=2) * upstream).sum(), (X, K, b))
    theirs = torch.autograd.grad((F.conv2d(X, K, b, padding=2) * upstream).sum(), (X, K, b))
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, message", [
    (lambda: ops.corr2d_multi_in(torch.zeros(3, 5, 5), torch.zeros(2, 2, 2)),
     r"channel mismatch: input X \(3, 5, 5\) has 3 channels but kernel K \(2, 2, 2\) expects 2"),
    (lambda: ops.corr2d_multi_in_out(torch.zeros(3, 5, 5), torch.zeros(4, 2, 2, 2)), "channel mismatch"),
    (lambda: ops.conv2d(torch.zeros(1, 3, 5, 5), torch.zeros(4, 1, 2, 2)), "channel mismatch"),
    (lambda: ops.corr2d_multi_in_out_1x1(torch.zeros(3, 5, 5), torch.zeros(4, 2, 1, 1)), "channel mismatch"),
    (lambda: ops.corr2d(torch.zeros(3, 3), torch.zeros(4, 2)),
     r"kernel 4x2 is larger than the padded input 3x3"),
    (lambda: ops.corr2d(torch.zeros(3, 3), torch.zeros(5, 2), padding=(0, 1, 0, 0)),
     r"kernel 5x2 is larger than the padded input 4x3"),
    (lambda: ops.pool2d(torch.zeros(3, 3), 4), "larger than the padded input"),
    (lambda: ops.corr2d(torch.zeros(5, 5), torch.zeros(2, 2), stride=0), r"stride must be at least 1.*0"),
    (lambda: ops.conv2d(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 2, 2), stride=(1, -2)),
     r"stride must be at least 1.*\(1, -2\)"),
    (lambda: ops.pool2d(torch.zeros(5, 5), 2, stride=(0, 1)), "stride must be at least 1"),
    (lambda: ops.corr2d(torch.zeros(5, 5), torch.zeros(1, 2, 2)), r"kernel K must be 2-D.*\(1, 2, 2\)"),
    (lambda: ops.corr2d_loop(torch.zeros(5, 5), torch.zeros(2)), r"kernel K must be 2-D.*\(2,\)"),
    (lambda: ops.corr2d(torch.zeros(1, 5, 5), torch.zeros(2, 2)), r"input X must be 2-D.*\(1, 5, 5\)"),
    (lambda: ops.corr2d_multi_in_out_1x1(torch.zeros(2, 5, 5), torch.zeros(3, 2, 3, 3)), r"\(3, 2, 3, 3\)"),
    (lambda: ops.conv2d(torch.zeros(1, 1, 5, 5), torch.zeros(2, 1, 3, 3), bias=torch.zeros(3)),
     r"bias must have shape \(2,\)"),
    (lambda: ops.corr2d(torch.zeros(5, 5), torch.zeros(2, 2), padding=-1), "padding must be zero or positive"),
    (lambda: ops.corr2d(torch.zeros(5, 5), torch.zeros(2, 2), padding=(1, 2, 3)), "padding must be an int"),
    (lambda: ops.pool2d(torch.zeros(5, 5), 2, mode="median"), "mode must be 'max' or 'avg'"),
    (lambda: ops.pool2d(torch.zeros(5, 5), 2, padding=(0, 2, 0, 0)), "padding .* must be smaller than the pool size"),
])
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
