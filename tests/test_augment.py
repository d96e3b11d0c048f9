"""Augmentations keep shapes and dtypes, do what they say against slicing references, and are
reproducible from (seed, epoch, step)."""

import torch
import torch.nn.functional as F

from cnnlab.augment import BatchAugment, batch_generator, horizontal_flip, random_crop, random_erasing


def batch(n=16):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = batch()
    out = random_crop(x, 3, batch_generator(x.device, 5, 0, 0))
    assert out.shape == x.shape and out.dtype == x.dtype
    g = batch_generator(x.device, 5, 0, 0)
    dy = torch.randint(0, 7, (16,), generator=g)
    dx = torch.randint(0, 7, (16,), generator=g)
    padded = F.pad(x, (3, 3, 3, 3))
    ref = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(16)])
    assert torch.equal(out, ref)
    assert not torch.equal(out, x)


def test_flip_mirrors_some_images_and_leaves_the_rest():
    x = batch(64)
    out = horizontal_flip(x, batch_generator(x.device, 0, 0, 0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped | kept).all() and flipped.any() and kept.any()


def test_erasing_blanks_one_rectangle_per_erased_image():
    x = batch(64) + 0.5  # no zeros before erasing
    out = random_erasing(x, batch_generator(x.device, 0, 0, 0), p=1.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    for o, xi in zip(out, x):
        zero = o[0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.any() and zero.sum() == rows.numel() * cols.numel()  # a full rectangle
        assert 0.02 * 784 * 0.5 <= zero.sum() <= 0.33 * 784 * 1.5
        assert torch.equal(o[0][~zero], xi[0][~zero])
    none = random_erasing(x, batch_generator(x.device, 0, 0, 0), p=0.0)
    assert torch.equal(none, x)


def test_batches_are_reproducible_from_seed_epoch_and_step():
    x = batch()
    aug = BatchAugment(["crop", "flip", "erase"], seed=3)
    assert torch.equal(aug(x, 2, 7), aug(x, 2, 7))
    assert torch.equal(aug(x, 2, 7), BatchAugment(["crop", "flip", "erase"], seed=3)(x, 2, 7))
    assert not torch.equal(aug(x, 2, 7), aug(x, 2, 8))
    assert not torch.equal(aug(x, 2, 7), BatchAugment(["crop", "flip", "erase"], seed=4)(x, 2, 7))
    position = {"at": (1, 4)}
    aug.position = lambda: position["at"]
    assert torch.equal(aug(x), aug(x, 1, 4))


def test_resumed_augmented_run_matches_the_uninterrupted_one(fashion_subset, tmp_path):
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.run import build_trainer

    config = TrainConfig(data_dir=str(fashion_subset), verify=False, train_limit=96, test_limit=32, batch_size=32, epochs=2,
                         augment=["crop", "flip", "erase"], model="lenet_bn").validate()
    cpu = torch.device("cpu")
    whole = build_trainer(config, cpu)
    whole.fit()
    first = build_trainer(config, cpu)
    first.epochs = 1
    first.fit()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    from cnnlab.train.checkpoint import load_checkpoint

    resumed = build_trainer(config, cpu)
    resumed.load_checkpoint(load_checkpoint(tmp_path / "ckpt.pt"))
    resumed.fit()
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
