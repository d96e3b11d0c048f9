"""Every registered model maps images of its input size to class scores, at the book's size and at 28x28."""

import pytest
import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models import create, get_model_info, list_models

ZOO = ["alexnet", "alexnet_mini", "vgg11", "vgg_mini", "nin", "nin_mini", "googlenet", "googlenet_mini",
       "resnet18", "resnet_mini", "densenet", "densenet_mini", "lenet", "lenet_bn", "lenet_wide"]
BOOK_SIZES = {"alexnet": 224, "vgg11": 224, "nin": 224, "googlenet": 96, "resnet18": 96, "densenet": 96}
COMPACT = {"alexnet": "alexnet_mini", "vgg11": "vgg_mini", "nin": "nin_mini", "googlenet": "googlenet_mini",
           "resnet18": "resnet_mini", "densenet": "densenet_mini"}
# VGG-11's 4096-wide head at 224 holds 120M parameters; a narrow head keeps the test light and
# checks the same convolutional body and flatten size.
LIGHT = {"vgg11": {"hidden": 64}}


def test_zoo_is_registered_with_the_books_input_sizes():
    assert set(ZOO) <= set(list_models())
    for name, size in BOOK_SIZES.items():
        assert get_model_info(name).input_size == size
        assert get_model_info(COMPACT[name]).input_size == 28


@pytest.mark.parametrize("name", ZOO)
def test_output_shape_at_its_input_size(name):
    size = get_model_info(name).input_size
    torch.manual_seed(0)
    model = create(name, num_classes=7, in_channels=1, **LIGHT.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, size, size))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["lenet_wide", "resnet_mini", "densenet_mini"])
def test_compact_models_train_on_28x28_batches_with_three_channels(name):
    model = create(name, num_classes=10, in_channels=3)
    x = torch.rand(4, 3, 28, 28)
    loss = nn.functional.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_resnet_mini_options_change_depth_and_width():
    deeper = create("resnet_mini", widths=[16, 32], blocks=[2, 2])
    convs = [m for m in deeper.modules() if isinstance(m, nn.Conv2d)]
    # stem + 4 blocks x 2 convs + one 1x1 shortcut where the width changes
    assert len(convs) == 1 + 8 + 1
    assert deeper[-1].in_features == 32
    with pytest.raises(ConfigError):
        create("resnet_mini", widths=[16, 32], blocks=[1])


def test_book_resnet18_has_the_books_parameter_count():
    # d2l 7.6's ResNet-18 for 1-channel input and 10 classes (its summary prints 11.2M).
    assert sum(p.numel() for p in create("resnet18").parameters()) == 11_175_370


def test_vgg_pool_before_norm_moves_each_blocks_pool_and_keeps_the_function_without_batch_norm():
    """pool_before_norm: each block's last conv is max-pooled before its batch norm and ReLU, which then see
    a quarter of the pixels; without batch norm it is the same network (ReLU and max commute), weight for weight."""
    arch = [[1, 4], [2, 6]]
    pooled = create("vgg_mini", arch=arch, hidden=8, pool_before_norm=True)
    kinds = [type(m).__name__ for m in pooled[1]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in create("vgg_mini", arch=arch, hidden=8)[1]][-1] == "MaxPool2d"
    torch.manual_seed(0)
    plain = create("vgg_mini", arch=arch, hidden=8, batch_norm=False).eval()
    early = create("vgg_mini", arch=arch, hidden=8, batch_norm=False, pool_before_norm=True).eval()
    early.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(early(x), plain(x))
    assert sum(p.numel() for p in early.parameters()) == sum(p.numel() for p in plain.parameters())


def test_vgg_mini_head_dropout_is_an_option():
    head = [m for m in create("vgg_mini", dropout=0.0) if isinstance(m, nn.Dropout)]
    assert [m.p for m in head] == [0.0, 0.0]
    assert [m.p for m in create("vgg_mini") if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.5"):
        create("vgg_mini", dropout=1.5)
