"""cnnlab.layers against torch.nn: same outputs, same gradients, interchangeable state dicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import Conv2D, ScratchConv2d, ScratchPool2d


def test_book_conv2d_is_corr2d_plus_bias():
    layer = Conv2D((2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.bias.fill_(0.5)
    X = torch.rand(6, 8, generator=torch.Generator().manual_seed(1))
    expected = F.conv2d(X[None, None], layer.weight[None, None], layer.bias)[0, 0]
    torch.testing.assert_close(layer(X), expected)
    assert layer(X).shape == (5, 6)


def test_book_conv2d_weight_starts_uniform_in_unit_interval_and_is_seeded():
    a = Conv2D((3, 3), generator=torch.Generator().manual_seed(7))
    b = Conv2D((3, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.weight, b.weight)
    assert bool(((a.weight >= 0) & (a.weight < 1)).all())
    assert a.bias.tolist() == [0.0]
    assert Conv2D((1, 2), bias=False).bias is None
    assert [name for name, _ in Conv2D((1, 2), bias=False).named_parameters()] == ["weight"]


def test_book_conv2d_gradients_reach_weight_and_bias():
    layer = Conv2D((2, 2), padding=1, stride=2)
    X = torch.rand(5, 5)
    layer(X).sum().backward()
    # d(sum of outputs)/d bias is the number of outputs: (5 + 2 - 2 + 2) // 2 = 3 per side.
    assert layer.bias.grad.tolist() == [9.0]
    padded = F.pad(X, (1, 1, 1, 1))
    expected = torch.autograd.grad(F.conv2d(padded[None, None], layer.weight[None, None], stride=2).sum(),
                                   layer.weight)[0]
    torch.testing.assert_close(layer.weight.grad, expected)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),
    dict(in_channels=6, out_channels=16, kernel_size=5),
    dict(in_channels=3, out_channels=2, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), bias=False),
])
def test_scratch_conv2d_is_a_drop_in_for_nn_conv2d(kwargs):
    torch.manual_seed(0)
    reference = nn.Conv2d(**kwargs).double()
    ours = ScratchConv2d(**kwargs).double()
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict())
    X = torch.rand(4, kwargs["in_channels"], 14, 14, dtype=torch.float64, requires_grad=True)
    upstream = torch.rand_like(reference(X))
    torch.testing.assert_close(ours(X), reference(X), atol=1e-10, rtol=1e-10)
    grads_ours = torch.autograd.grad((ours(X) * upstream).sum(), [X, *ours.parameters()])
    grads_ref = torch.autograd.grad((reference(X) * upstream).sum(), [X, *reference.parameters()])
    for a, e in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)


def test_scratch_conv2d_initialisation_matches_nn_conv2d_bounds():
    """Kaiming-uniform with a = sqrt(5) gives weights and biases within +-1/sqrt(fan_in)."""
    layer = ScratchConv2d(6, 16, 5)
    bound = 1 / (6 * 25) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    # Spread like a uniform on [-bound, bound]: standard deviation bound / sqrt(3).
    assert abs(layer.weight.std().item() - bound / 3 ** 0.5) < 0.1 * bound


@pytest.mark.parametrize("mode, reference", [("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)])
def test_scratch_pool2d_matches_nn_pooling(mode, reference, kwargs):
    ours = ScratchPool2d(kwargs["kernel_size"], mode, stride=kwargs.get("stride"),
                         padding=kwargs.get("padding", 0))
    X = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(ours(X), reference(**kwargs)(X), atol=1e-10, rtol=1e-10)


def test_lenet_rebuilt_from_scratch_layers_gives_the_same_shapes_and_logits():
    """The book's LeNet with every convolution and pooling swapped for cnnlab's own."""
    def lenet(conv, pool):
        return nn.Sequential(conv(1, 6, 5, padding=2), nn.Sigmoid(), pool(),
                             conv(6, 16, 5), nn.Sigmoid(), pool(), nn.Flatten(),
                             nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
                             nn.Linear(84, 10))

    torch.manual_seed(0)
    reference = lenet(nn.Conv2d, lambda: nn.AvgPool2d(kernel_size=2, stride=2))
    ours = lenet(ScratchConv2d, lambda: ScratchPool2d(2, "avg"))
    ours.load_state_dict(reference.state_dict())
    X = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(ours(X), reference(X), atol=1e-5, rtol=1e-5)
    shapes, x = [], torch.rand(1, 1, 28, 28)
    for layer in ours:
        x = layer(x)
        shapes.append(tuple(x.shape))
    # The table the book prints (d2l 6.6).
    assert shapes == [(1, 6, 28, 28), (1, 6, 28, 28), (1, 6, 14, 14), (1, 16, 10, 10), (1, 16, 10, 10),
                      (1, 16, 5, 5), (1, 400), (1, 120), (1, 120), (1, 84), (1, 84), (1, 10)]


def test_layer_arguments_are_validated():
    with pytest.raises(ValueError, match="in_channels must be a positive int, not 0"):
        ScratchConv2d(0, 6, 5)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        ScratchConv2d(1, 6, 5, stride=0)
    with pytest.raises(ValueError, match="mode must be 'max' or 'avg'"):
        ScratchPool2d(2, "min")
    with pytest.raises(ValueError, match=r"channel mismatch.*\(2, 3, 8, 8\)"):
        ScratchConv2d(1, 6, 5)(torch.zeros(2, 3, 8, 8))
