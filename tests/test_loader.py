"""BatchIterator: batch sizes, seeded shuffling, conversion as ToTensor/Normalize/Resize do it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab.data.sources as sources
from cnnlab.data import BatchIterator, load_split, to_float
from cnnlab.data.loader import epoch_permutation


def synthetic(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(n, dtype=torch.int64)  # label i marks example i
    return images, labels


@pytest.fixture(scope="module")
def fashion_train():
    from conftest import SUBSET_DATA

    sources.forget_loaded()
    return load_split("fashion-mnist", "train", SUBSET_DATA, verify=False)


def test_last_partial_batch_is_kept():
    images, labels = synthetic(10)
    batches = list(BatchIterator(images, labels, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert len(BatchIterator(images, labels, 4)) == 3
    assert [len(y) for _, y in BatchIterator(images, labels, 4, drop_last=True)] == [4, 4]
    assert len(BatchIterator(images, labels, 4, drop_last=True)) == 2


def test_fashion_epoch_of_256(fashion_train):
    images, labels = fashion_train
    loader = BatchIterator(images, labels, 256, shuffle=True, seed=1)
    assert len(loader) == 8  # ceil(2000 / 256), as the book's DataLoader
    seen = torch.zeros(10, dtype=torch.int64)
    sizes = []
    for X, y in loader:
        assert X.dtype == torch.float32 and X.shape[1:] == (1, 28, 28)
        sizes.append(len(y))
        seen += torch.bincount(y, minlength=10)
    assert sizes[-1] == 2_000 - 7 * 256 and len(sizes) == 8
    assert seen.tolist() == torch.bincount(labels, minlength=10).tolist()


def test_unshuffled_order_is_the_data_order():
    images, labels = synthetic(10)
    xs, ys = zip(*BatchIterator(images, labels, 3))
    assert torch.equal(torch.cat(ys), labels)
    assert torch.equal(torch.cat(xs), images.float() / 255)


def epoch_orders(loader, epochs):
    return [torch.cat([y for _, y in loader]).tolist() for _ in range(epochs)]


def test_shuffle_is_a_permutation_reproducible_from_the_seed():
    images, labels = synthetic(50)
    a = epoch_orders(BatchIterator(images, labels, 8, shuffle=True, seed=3), 3)
    b = epoch_orders(BatchIterator(images, labels, 8, shuffle=True, seed=3), 3)
    c = epoch_orders(BatchIterator(images, labels, 8, shuffle=True, seed=4), 3)
    assert a == b
    assert a != c
    assert all(sorted(order) == list(range(50)) for order in a)
    assert a[0] != a[1] != a[2]


def test_images_travel_with_their_labels():
    images, labels = synthetic(20)
    for X, y in BatchIterator(images, labels, 6, shuffle=True, seed=0):
        assert torch.equal(X, images[y].float() / 255)


def test_set_epoch_reproduces_a_later_epoch():
    images, labels = synthetic(30)
    run = epoch_orders(BatchIterator(images, labels, 7, shuffle=True, seed=9), 3)
    resumed = BatchIterator(images, labels, 7, shuffle=True, seed=9)
    resumed.set_epoch(2)
    assert epoch_orders(resumed, 1)[0] == run[2]


def test_distinct_seed_epoch_pairs_give_distinct_orders():
    assert not torch.equal(epoch_permutation(100, 0, 1_000_003), epoch_permutation(100, 1, 0))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 1, 0))


def test_ranks_split_an_epoch_without_overlap():
    images, labels = synthetic(23)
    shards = [torch.cat([y for _, y in BatchIterator(images, labels, 4, shuffle=True, seed=5, rank=r,
                                                      world_size=3)]) for r in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7]
    everything = torch.cat(shards)
    assert len(set(everything.tolist())) == 21
    assert torch.equal(torch.sort(everything).values,
                       torch.sort(epoch_permutation(23, 5, 0)[:21]).values)


def test_conversion_is_to_tensor():
    images, _ = synthetic(4)
    reference = torch.from_numpy(images.numpy().astype(np.float32) / np.float32(255))
    assert torch.equal(to_float(images), reference)
    assert to_float(images).min() >= 0 and to_float(images).max() <= 1


def test_normalisation_matches_the_formula():
    images, labels = synthetic(4)
    mean, std = 0.2860, 0.3530
    X, _ = next(iter(BatchIterator(images, labels, 4, normalize=((mean,), (std,)))))
    expected = (images.double() / 255 - mean) / std
    torch.testing.assert_close(X.double(), expected, atol=1e-6, rtol=0)


def test_resize_matches_the_books_pil_pipeline():
    """d2l resizes PIL images (bilinear) before ToTensor; PIL rounds to uint8 in between."""
    images, labels = synthetic(3)
    X, _ = next(iter(BatchIterator(images, labels, 3, resize=64)))
    assert X.shape == (3, 1, 64, 64)
    for i in range(3):
        pil = Image.fromarray(images[i, 0].numpy(), mode="L").resize((64, 64), Image.BILINEAR)
        reference = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255)
        torch.testing.assert_close(X[i, 0], reference, atol=1.5 / 255, rtol=0)


def test_to_float_leaves_its_input_alone():
    x = torch.full((1, 1, 2, 2), 255.0)
    to_float(x)
    assert torch.equal(x, torch.full((1, 1, 2, 2), 255.0))


def test_bad_arguments_are_config_errors():
    images, labels = synthetic(4)
    from cnnlab.errors import ConfigError
    with pytest.raises(ConfigError):
        BatchIterator(images.float(), labels, 2)
    with pytest.raises(ConfigError):
        BatchIterator(images, labels[:3], 2)
    with pytest.raises(ConfigError):
        BatchIterator(images, labels, 0)
