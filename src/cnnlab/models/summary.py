"""Per-layer output shapes, parameter counts and multiply-accumulates (MACs).

``format_shape_table`` reproduces the book's table exactly: one line per layer,
``Conv2d output shape:\\t torch.Size([1, 6, 28, 28])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.text import display_width, pad


@dataclass(frozen=True)
class LayerStats:
    name: str           # class name, as the book prints it
    path: str           # dotted path inside the model
    output_shape: torch.Size
    params: int         # parameters owned directly by this layer
    macs: int           # multiply-accumulates for the whole input batch


def _leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children of a Sequential (as the book iterates), else every leaf module."""
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def layer_stats(model: nn.Module, input_shape=(1, 1, 28, 28)) -> list[LayerStats]:
    """Run one zero batch through ``model`` (in eval mode, no grad) and record every layer.

    For a Sequential whose children are blocks, the block's row counts the parameters and MACs of
    everything inside it.
    """
    layers = _leaf_layers(model)
    records: dict[str, LayerStats] = {}
    inner_macs: dict[int, int] = {}
    hooks = []

    def leaf_hook(module, inputs, output):
        inner_macs[id(module)] = _macs_leaf(module, output)

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(leaf_hook))

    def row_hook(path):
        def hook(module, inputs, output):
            macs = sum(inner_macs.get(id(m), 0) for m in module.modules())
            params = sum(p.numel() for p in module.parameters())
            records[path] = LayerStats(type(module).__name__, path, output.shape, params, macs)
        return hook

    for path, layer in layers:
        hooks.append(layer.register_forward_hook(row_hook(path)))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [records[path] for path, _ in layers if path in records]


def _macs_leaf(layer: nn.Module, output: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        per_output = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        return output.numel() * per_output
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    return 0


def format_shape_table(stats: list[LayerStats]) -> str:
    """The book's table: ``<Layer> output shape:\\t <torch.Size>``, one line per layer."""
    return "\n".join(f"{s.name} output shape:\t {s.output_shape}" for s in stats)


def format_summary(stats: list[LayerStats]) -> str:
    """A table of layers with output shape, parameters and MACs per example, and the totals."""
    batch = stats[0].output_shape[0] if stats else 1
    rows = [(s.path, s.name, str(tuple(s.output_shape)), f"{s.params:,}", f"{s.macs // batch:,}") for s in stats]
    header = ("#", "layer", "output shape", "params", "MACs")
    total = ("", "total", "", f"{sum(s.params for s in stats):,}", f"{sum(s.macs for s in stats) // batch:,}")
    widths = [max(display_width(r[i]) for r in [header, *rows, total]) for i in range(5)]

    def line(r):
        return "  ".join(pad(c, w, "<" if i < 3 else ">") for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * display_width(line(header))
    return "\n".join([line(header), rule, *map(line, rows), rule, line(total)])
