"""Which network of the zoo a model someone built resembles, by its layers: for pointing a learner who
trains the book's chapter-7 network on a CPU to the zoo's 28x28 form of it.

Resemblance is of layer kinds, not widths: each convolution counts as its kernel size and stride, each
pooling layer as its kind, size and stride, each dense layer as one.  The book's own VGG trains with a
quarter of the channels (d2l 7.2's ``small_conv_arch``) and is still VGG; batch norms are left out, so
a shortcut with or without one is still ResNet's.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from cnnlab.models.registry import create, get_model_info, list_models

MIN_RESEMBLANCE = 0.75
"""The share of layers two networks must have in common (of the larger one's count) to be called alike."""


def layer_signature(model: nn.Module) -> Counter:
    """How many layers of each kind ``model`` has: convolutions by kernel size and stride, pooling by
    kind, size and stride, dense layers as one kind."""

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    kinds: Counter = Counter()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kinds[("conv", pair(m.kernel_size), pair(m.stride))] += 1
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            kinds[(type(m).__name__, pair(m.kernel_size), pair(m.stride or m.kernel_size))] += 1
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            kinds[(type(m).__name__,)] += 1
        elif isinstance(m, nn.Linear):
            kinds[("dense",)] += 1
    return kinds


def resemblance(a: Counter, b: Counter) -> float:
    """Layers in common over the larger network's layer count (1: the same kinds, in the same numbers)."""
    largest = max(sum(a.values()), sum(b.values()))
    return sum((a & b).values()) / largest if largest else 0.0


def small_form(model: nn.Module) -> str | None:
    """The zoo's 28x28 network of the family whose book-sized network ``model`` most resembles (at least
    :data:`MIN_RESEMBLANCE`), e.g. ``resnet_mini`` for d2l 7.6's ResNet; None if none does or the
    family has no 28x28 form."""
    signature = layer_signature(model)
    best, best_score = None, MIN_RESEMBLANCE
    for name in list_models():
        info = get_model_info(name)
        if info.input_size == 28:
            continue
        with torch.device("meta"):   # shapes only: VGG-11 would allocate 500 MB
            score = resemblance(signature, layer_signature(create(name)))
        if score >= best_score:
            best, best_score = info.family, score
    if best is None:
        return None
    small = [n for n in list_models() if get_model_info(n).family == best and get_model_info(n).input_size == 28]
    return small[0] if small else None
