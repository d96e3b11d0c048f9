"""Batched on-device augmentation: random crop with padding, horizontal flip, random erasing.

Each operation transforms a whole float batch (B, C, H, W) with tensor ops on its device; there is
no per-sample Python.  The randomness of a batch comes from a generator seeded with
``(seed, epoch, step)``, so a run is reproducible and a resumed run augments its remaining
batches exactly as the uninterrupted run would, with no generator state to checkpoint.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

ERASE_AREA = (0.02, 0.33)
"""Fraction of the image a random-erasing rectangle covers, and its aspect-ratio range (as torchvision)."""
ERASE_RATIO = (0.3, 3.3)


def batch_generator(device: torch.device, seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for one batch; distinct (seed, epoch, step) give distinct streams."""
    g = torch.Generator(device=device)
    g.manual_seed((((seed * 1_000_003) + epoch) * 1_000_033 + step) % (2**63 - 1))
    return g


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad every image by ``padding`` zeros on each side and cut a random HxW window back out."""
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, padded.shape[3])
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    # out[b, c, i, j] = padded[b, c, dy[b] + i, dx[b] + j]: gather the rows, then the columns.
    return padded.gather(2, rows).gather(3, cols)


def horizontal_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erasing(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, value: float = 0.0) -> torch.Tensor:
    """With probability ``p`` per image, set a random rectangle (2-33% of the area) to ``value``."""
    b, _, h, w = x.shape
    dev = x.device
    area = h * w * torch.empty(b, device=dev).uniform_(*ERASE_AREA, generator=generator)
    log_ratio = torch.empty(b, device=dev).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]),
                                                    generator=generator)
    ratio = log_ratio.exp()
    eh = (area * ratio).sqrt().round().clamp(1, h).long()
    ew = (area / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(b, device=dev, generator=generator) * (h - eh + 1)).floor().long()
    left = (torch.rand(b, device=dev, generator=generator) * (w - ew + 1)).floor().long()
    apply = torch.rand(b, device=dev, generator=generator) < p
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]
    return x.masked_fill(mask, value)


class BatchAugment:
    """Apply the named augmentations in order to each training batch.

    ``position`` returns the (epoch, step) of the batch being trained; the engine's state gives
    it, and the seed of the batch's generator is derived from it.
    """

    def __init__(self, names: Sequence[str], seed: int, *, crop_padding: int = 2, erase_prob: float = 0.5,
                 position: Callable[[], tuple[int, int]] | None = None):
        unknown = [n for n in names if n not in ("crop", "flip", "erase")]
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r}; choose from crop, flip, erase")
        self.names = list(names)
        self.seed = seed
        self.crop_padding = crop_padding
        self.erase_prob = erase_prob
        self.position = position or (lambda: (0, 0))

    def __call__(self, x: torch.Tensor, epoch: int | None = None, step: int | None = None) -> torch.Tensor:
        if epoch is None or step is None:
            epoch, step = self.position()
        g = batch_generator(x.device, self.seed, epoch, step)
        for name in self.names:
            if name == "crop":
                x = random_crop(x, self.crop_padding, g)
            elif name == "flip":
                x = horizontal_flip(x, g)
            else:
                x = random_erasing(x, g, self.erase_prob)
        return x
