"""Batches as index slices of tensors that already live on the training device.

The book's pipeline converts one PIL image at a time in DataLoader workers.  Here the whole
split is one uint8 tensor (N, 1, 28, 28) on the device; a batch is ``images[idx]`` followed by
one vectorised conversion to float.  No per-sample Python, no worker processes.

The order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run or another
process (distributed training) can reproduce any epoch's order without replaying history.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` examples for ``epoch`` of a run seeded with ``seed`` (CPU, int64)."""
    g = torch.Generator(device="cpu")
    # Hash (seed, epoch) into one 63-bit generator seed.  A linear mix such as
    # seed * 1_000_003 + epoch gives (0, 1_000_003) and (1, 0) the same stream.
    digest = hashlib.blake2b(f"{seed},{epoch}".encode(), digest_size=8).digest()
    g.manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.randperm(n, generator=g)


def to_float(images: torch.Tensor, *, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
             resize: int | tuple[int, int] | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float in [0, 1] as ``ToTensor`` does, then optional resize and normalisation.

    ``resize`` matches d2l's ``transforms.Resize`` on a tensor: bilinear with antialiasing.
    ``normalize`` is ``(mean, std)`` per channel, applied after scaling to [0, 1].
    """
    # copy=True: for an input already of ``dtype`` the in-place division would change the caller's tensor.
    x = images.to(dtype, copy=True).div_(255.0)
    if resize is not None:
        size = (resize, resize) if isinstance(resize, int) else tuple(resize)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if normalize is not None:
        mean, std = normalize
        shape = (1, -1, 1, 1)
        x = (x - torch.as_tensor(mean, dtype=dtype, device=x.device).view(shape)) / torch.as_tensor(
            std, dtype=dtype, device=x.device).view(shape)
    return x


class BatchIterator:
    """Iterate (X, y) batches of a device-resident split.

    Parameters
    ----------
    images : uint8 tensor (N, C, H, W)
    labels : int64 tensor (N,)
    batch_size : examples per batch; the last partial batch is kept unless ``drop_last``.
    shuffle : a new order every epoch, from ``epoch_permutation(N, seed, epoch)``.
    seed : the run's seed; the same seed gives the same sequence of epochs.
    device : where batches are produced; the split is moved there once.
    normalize, resize, dtype : see :func:`to_float`.
    rank, world_size : for distributed training, ``batch_size`` is the per-rank batch and the
        global batch is ``batch_size * world_size``.  Each epoch's order is cut into global
        batches and rank ``r`` takes the ``r``-th equal slice of every one, so the ranks' k-th
        batches together are exactly the k-th batch of a single process using the global batch
        size and the same seed: DDP's gradient average then equals the single-process mean.
        The (at most ``world_size - 1``) examples at the end of the epoch's order past the
        largest multiple of ``world_size`` are skipped that epoch, so the last, partial global
        batch also splits equally.
    even_shards : False for evaluation, where ranks need not see equal counts: the split is cut
        into ``world_size`` contiguous blocks (sizes differ by at most one) covering every example.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, device: torch.device | str | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 resize: int | tuple[int, int] | None = None, dtype: torch.dtype = torch.float32,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, even_shards: bool = True):
        if images.dtype != torch.uint8:
            raise ConfigError(f"images must be uint8, got {images.dtype}")
        if images.ndim != 4:
            raise ConfigError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ConfigError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in range for world size {world_size}")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self.normalize = normalize
        self.resize = resize
        self.dtype = dtype
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.even_shards = even_shards
        self.epoch = 0

    def _shard_size(self) -> int:
        n = self.images.shape[0]
        if self.world_size == 1:
            return n
        if self.even_shards:
            return n // self.world_size
        return (self.rank + 1) * n // self.world_size - self.rank * n // self.world_size

    @property
    def num_examples(self) -> int:
        """Examples this iterator yields per epoch (this rank's shard)."""
        n = self._shard_size()
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's order the next iteration yields (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's example indices for ``epoch`` (default: the next one), on the device."""
        epoch = self.epoch if epoch is None else epoch
        n = self.images.shape[0]
        order = epoch_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            order = self._shard(order)
        return order.to(self.device, non_blocking=True)

    def _shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of the global ``order`` (see the class docstring)."""
        w, r, n = self.world_size, self.rank, order.shape[0]
        if not self.even_shards:
            return order[r * n // w:(r + 1) * n // w]
        global_batch = self.batch_size * w
        full = n // global_batch
        head = order[:full * global_batch].view(full, w, self.batch_size)[:, r]
        tail = order[full * global_batch:]
        tail = tail[:tail.shape[0] - tail.shape[0] % w].view(w, -1)[r]
        return torch.cat((head.reshape(-1), tail))

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(images, normalize=self.normalize, resize=self.resize, dtype=self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, beginning with batch number ``start`` (to resume mid-epoch)."""
        order = self.indices(epoch)
        n = order.shape[0]
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        in_order = not self.shuffle and self.world_size == 1
        for begin in range(start * self.batch_size, stop, self.batch_size):
            if in_order:  # a view, no gather
                xb = self.images[begin:begin + self.batch_size]
                yb = self.labels[begin:begin + self.batch_size]
            else:
                idx = order[begin:begin + self.batch_size]
                xb = self.images.index_select(0, idx)
                yb = self.labels.index_select(0, idx)
            yield self.convert(xb), yb
