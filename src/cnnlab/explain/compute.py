"""What ``cnnlab explain`` shows, computed: a trained network layer by layer, and how one number is made.

The network is read as the list of modules its ``nn.Sequential`` containers run in order (every model
of the registry is one).  A *layer* on the page is a convolution, dense layer, pooling layer or other
block together with the element-wise modules after it (batch norm, activation, dropout), so a feature
map shows what the next layer receives.  Composite blocks (a residual block, an inception block) are
one layer whose maps are shown but whose numbers are not explained.

:func:`explain_unit` recomputes one output value from the layer's input with the book's definitions,
:func:`cnnlab.ops.corr2d_multi_in` for a convolution and :func:`cnnlab.ops.pool2d` for pooling, not by
reading the network's output back, so that the page can show each product, the sum, the bias and the
activation, and the test suite can check them against the network's own activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from cnnlab import ops
from cnnlab.errors import ConfigError
from cnnlab.models.blocks import ACTIVATIONS

ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity) + tuple(ACTIVATIONS.values())
"""Modules folded into the layer before them: they change each value on its own."""

POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

TOP_CONTRIBUTIONS = 12
"""How many of a dense unit's inputs the explanation lists one by one (the rest are summed)."""


NUMBER_DIGITS = 30
"""Most digits a whole number in a request may have: more is no number any answer could use."""


def _shown(value: Any) -> str:
    """``value`` as an error message quotes it: at most 40 characters of its repr."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (a JSON number, or the text of a query parameter or header) as a whole number from ``low``
    to ``high``; anything else, ``"--5"``, ``"²"`` or a number with thousands of digits included, is a
    :class:`ConfigError` naming ``name``.  Every number the explain server reads is read by this."""
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("+", "-") else text
        if not (digits.isascii() and digits.isdigit()):
            raise ConfigError(f"{name} must be a whole number, not {_shown(value)}")
        if len(digits.lstrip("0")) > NUMBER_DIGITS:
            raise ConfigError(f"{name} {_shown(value)} is out of range: {low} to {high}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, not {_shown(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name} {_shown(value)} is out of range: {low} to {high}")
    return value


def _flat_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _flat_modules(child)]
    return [module]


@dataclass
class Layer:
    """One column of the page: a head module and the element-wise modules that follow it."""

    index: int
    head: nn.Module
    tail: list[nn.Module] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if isinstance(self.head, nn.Conv2d):
            return "conv"
        if isinstance(self.head, nn.Linear):
            return "dense"
        if isinstance(self.head, POOLING):
            return "pool"
        if isinstance(self.head, nn.Flatten):
            return "flatten"
        return "block"

    @property
    def shown_modules(self) -> list[nn.Module]:
        """The head and the tail's modules that change a trained network's values (not dropout, identity)."""
        return [self.head] + [m for m in self.tail if not isinstance(m, (nn.Dropout, nn.Identity))]

    @property
    def name(self) -> str:
        return " + ".join(_describe(m) for m in self.shown_modules)

    @property
    def parts(self) -> list[dict[str, Any]]:
        """The name's modules as :func:`_part` gives them, for a page that names them in another language."""
        return [_part(m) for m in self.shown_modules]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for module in [self.head, *self.tail]:
            x = module(x)
        return x


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _part(module: nn.Module) -> dict[str, Any]:
    """One module as the page names it, in words and sizes it can put in any language: ``op`` (conv, dense,
    max pool, avg pool, global avg pool, global max pool, batch norm, an activation, flatten, or a block's
    class name) and the numbers of its name (kernel size, channels or features)."""
    if isinstance(module, nn.Conv2d):
        return {"op": "conv", "kernel_size": list(module.kernel_size), "channels": module.out_channels}
    if isinstance(module, nn.Linear):
        return {"op": "dense", "features": module.out_features}
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return {"op": "max pool" if isinstance(module, nn.MaxPool2d) else "avg pool",
                "kernel_size": list(_pair(module.kernel_size))}
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return {"op": f"global {'avg' if isinstance(module, nn.AdaptiveAvgPool2d) else 'max'} pool"}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"op": "batch norm"}
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls:
            return {"op": name}
    return {"op": type(module).__name__.lower()}


def _describe(module: nn.Module) -> str:
    part = _part(module)
    size = "x".join(map(str, part.get("kernel_size", ())))
    if part["op"] == "conv":
        return f"conv {size}, {part['channels']} channels"
    if part["op"] == "dense":
        return f"dense {part['features']}"
    return f"{part['op']} {size}" if size else part["op"]


def network_layers(model: nn.Module) -> list[Layer]:
    """The model as the page shows it (see the module's docstring)."""
    layers: list[Layer] = []
    for module in _flat_modules(model):
        if isinstance(module, ELEMENTWISE) and layers and layers[-1].kind != "flatten":
            layers[-1].tail.append(module)
        else:
            layers.append(Layer(len(layers), module))
    return layers


@torch.no_grad()
def run_layers(layers: Sequence[Layer], x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every layer for one input ``x`` (1, C, H, W); the last is the logits."""
    outputs = []
    for layer in layers:
        x = layer.run(x)
        outputs.append(x)
    return outputs


def _follows_book(module: nn.Module) -> bool:
    """Whether the output size of ``module`` is the book's formula of d2l 6.3 (no dilation, groups, ceil
    mode or padding given by name)."""
    if isinstance(module, nn.Conv2d):
        return module.dilation == (1, 1) and not isinstance(module.padding, str)
    return not getattr(module, "ceil_mode", False) and getattr(module, "dilation", 1) in (1, (1, 1))


def layer_geometry(layer: Layer, input_shape: Sequence[int], output_shape: Sequence[int]) -> dict[str, Any]:
    """The sizes that make ``layer``'s output, as d2l 6.3 names them, for the layer's header on the page.

    ``input_shape`` and ``output_shape`` are one example's (no batch).  Always ``input_shape``; for a
    convolution or dense layer ``weight_shape`` (a conv kernel: output channels x input channels x height
    x width); for a convolution or pooling window ``kernel_size``, ``padding`` (each side) and ``stride``,
    and, where the layer follows the book, ``formula``: for rows and for columns the numbers of
    ``floor((n - k + p + s) / s)``, ``p`` the padding of both sides together, worked out with
    :func:`cnnlab.ops.output_shape` (the tests check them against PyTorch's own output shapes).
    """
    head = layer.head
    geometry: dict[str, Any] = {"input_shape": list(input_shape)}
    if isinstance(head, (nn.Conv2d, nn.Linear)):
        geometry["weight_shape"] = list(head.weight.shape)
    if isinstance(head, nn.Conv2d) and not isinstance(head.padding, str):
        kernel, padding, stride = head.kernel_size, head.padding, head.stride
    elif isinstance(head, (nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(head.kernel_size)
        stride = _pair(head.stride if head.stride is not None else head.kernel_size)
        padding = _pair(head.padding)
    else:
        return geometry
    geometry.update(kernel_size=list(kernel), padding=list(padding), stride=list(stride), formula=None)
    if _follows_book(head) and len(input_shape) == 3:
        n = tuple(input_shape[1:])
        out = ops.output_shape(n, tuple(kernel), tuple(padding), tuple(stride))
        geometry["formula"] = [{"n": n[d], "k": kernel[d], "p": 2 * padding[d], "s": stride[d], "out": out[d]}
                               for d in (0, 1)]
    return geometry


# --------------------------------------------------------------------------- one number


def _unit_index(unit: Any, shape: Sequence[int], layer: Layer) -> tuple[int, ...]:
    """``unit`` as a valid index into one output (shape without the batch), else a one-line error."""
    dims = len(shape)
    names = ("channel", "row", "column") if dims == 3 else ("unit",)
    if (not isinstance(unit, (list, tuple)) or len(unit) != dims
            or any(isinstance(v, bool) or not isinstance(v, int) for v in unit)):
        raise ConfigError(f"layer {layer.index} ({layer.name}) has outputs of shape {list(shape)}: give the unit "
                          f"as [{', '.join(names)}], not {unit!r}")
    for value, size, name in zip(unit, shape, names):
        if not 0 <= value < size:
            raise ConfigError(f"{name} {value} is out of range for layer {layer.index} ({layer.name}): "
                              f"0 to {size - 1}")
    return tuple(unit)


def _values(t: torch.Tensor) -> Any:
    return t.tolist() if t.dim() else float(t)


def _tail_steps(layer: Layer, index: tuple[int, ...], head_out: torch.Tensor, z: float) -> tuple[list, float]:
    """The element-wise modules after the head applied to the recomputed value ``z`` of the unit at
    ``index`` (placed into a tensor shaped like the head's output ``head_out``, as batch norm needs its
    channel), with the numbers each one used; returns the steps and the final value."""
    steps = []
    x = head_out.clone()
    x[(0, *index)] = z
    for module in layer.tail:
        before = float(x[(0, *index)])
        x = module(x)
        after = float(x[(0, *index)])
        step: dict[str, Any] = {"op": _describe(module), "input": before, "output": after}
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = index[0]
            step.update(mean=float(module.running_mean[c]), var=float(module.running_var[c]), eps=module.eps,
                        weight=float(module.weight[c]) if module.weight is not None else 1.0,
                        bias=float(module.bias[c]) if module.bias is not None else 0.0)
        elif isinstance(module, nn.Dropout):
            step["op"] = "dropout (does nothing once trained)"
        steps.append(step)
    return steps, float(x[(0, *index)])


@torch.no_grad()
def explain_unit(layer: Layer, layer_input: torch.Tensor, unit: Any) -> dict[str, Any]:
    """How the value of ``unit`` in ``layer``'s output is made from the layer's input (1, ...).

    Conv: the padded input window in every input channel, the kernel, their element-wise products, the
    per-channel sums (``corr2d``), the total (``corr2d_multi_in``), the bias and the element-wise steps.
    Pool: the window and its max or mean (``pool2d``).  Dense: the inputs with the largest products,
    the sum of all products, the bias and the steps.
    """
    head = layer.head
    kind = layer.kind
    head_out = head(layer_input)
    shape = list(head_out.shape[1:])
    index = _unit_index(unit, shape, layer)
    if kind == "conv":
        result = _explain_conv(head, layer_input[0], index)
    elif kind == "pool":
        result = _explain_pool(head, layer_input[0], index)
    elif kind == "dense":
        result = _explain_dense(head, layer_input, index)
    else:
        raise ConfigError(f"layer {layer.index} ({layer.name}) is a {kind} layer: its numbers are not explained; "
                          f"choose a convolution, pooling or dense layer")
    steps, value = _tail_steps(layer, index, head_out, result["z"])
    result.update(layer=layer.index, name=layer.name, kind=kind, unit=list(index), steps=steps, value=value)
    return result


def _explain_conv(conv: nn.Conv2d, x: torch.Tensor, index: tuple[int, int, int]) -> dict[str, Any]:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError(f"this convolution (groups {conv.groups}, dilation {conv.dilation}, padding "
                          f"{conv.padding!r} {conv.padding_mode}) is not the book's: its numbers are not explained")
    c, i, j = index
    p_h, p_w = conv.padding
    s_h, s_w = conv.stride
    k_h, k_w = conv.kernel_size
    kernel = conv.weight[c].float()                                   # (c_in, k_h, k_w)
    x = x.float()
    padded = torch.nn.functional.pad(x, (p_w, p_w, p_h, p_h))
    window = padded[:, i * s_h:i * s_h + k_h, j * s_w:j * s_w + k_w]
    products = window * kernel
    # The book's definitions, over the whole map: one cross-correlation per input channel, and their sum.
    per_channel = [float(ops.corr2d(x[ch], kernel[ch], padding=(p_h, p_w), stride=(s_h, s_w))[i, j])
                   for ch in range(x.shape[0])]
    total = float(ops.corr2d_multi_in(x, kernel, padding=(p_h, p_w), stride=(s_h, s_w))[i, j])
    bias = float(conv.bias[c]) if conv.bias is not None else 0.0
    return {
        "window": _values(window), "kernel": _values(kernel), "products": _values(products),
        "channel_sums": per_channel, "sum": total, "bias": bias, "has_bias": conv.bias is not None, "z": total + bias,
        "padding": [p_h, p_w], "stride": [s_h, s_w], "kernel_size": [k_h, k_w],
        "input_size": list(x.shape[1:]), "origin": [i * s_h - p_h, j * s_w - p_w],
    }


def _pool_window(pool: nn.Module, size: tuple[int, int], i: int, j: int):
    """(rows, columns, padding, stride, kernel) of output (i, j) of ``pool`` on a ``size`` map."""
    h, w = size
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        out_h, out_w = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
        r0, r1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        c0, c1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
        return (r0, r1), (c0, c1), (0, 0), (r1 - r0, c1 - c0), (r1 - r0, c1 - c0)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k_h, k_w = pair(pool.kernel_size)
    s_h, s_w = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    p_h, p_w = pair(pool.padding)
    return ((i * s_h - p_h, i * s_h - p_h + k_h), (j * s_w - p_w, j * s_w - p_w + k_w), (p_h, p_w),
            (s_h, s_w), (k_h, k_w))


def _explain_pool(pool: nn.Module, x: torch.Tensor, index: tuple[int, int, int]) -> dict[str, Any]:
    unusual = (getattr(pool, "ceil_mode", False) or getattr(pool, "dilation", 1) not in (1, (1, 1))
               or getattr(pool, "count_include_pad", True) is False or getattr(pool, "divisor_override", None))
    if unusual:
        raise ConfigError("this pooling layer (ceil mode, dilation or a custom divisor) is not the book's: "
                          "its numbers are not explained")
    c, i, j = index
    mode = "max" if isinstance(pool, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) else "avg"
    (r0, r1), (c0, c1), (p_h, p_w), stride, kernel = _pool_window(pool, tuple(x.shape[1:]), i, j)
    channel = x[c].float()
    fill = float("-inf") if mode == "max" else 0.0
    padded = torch.nn.functional.pad(channel, (p_w, p_w, p_h, p_h), value=fill)
    window = padded[r0 + p_h:r1 + p_h, c0 + p_w:c1 + p_w]
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        value = float(ops.pool2d(window, tuple(window.shape), mode=mode)[0, 0])
    else:
        value = float(ops.pool2d(channel, kernel, mode=mode, padding=(p_h, p_w), stride=stride)[i, j])
    shown = [[None if math.isinf(v) else v for v in row] for row in window.tolist()]
    return {"window": shown, "mode": mode, "z": value, "result": value, "padding": [p_h, p_w],
            "stride": list(stride), "kernel_size": list(kernel), "input_size": list(x.shape[1:]),
            "origin": [r0, c0], "channel": c}


def _explain_dense(linear: nn.Linear, x: torch.Tensor, index: tuple[int]) -> dict[str, Any]:
    (o,) = index
    inputs = x[0].float()
    weights = linear.weight[o].float()
    products = inputs * weights
    total = float(inputs @ weights)
    bias = float(linear.bias[o]) if linear.bias is not None else 0.0
    order = products.abs().argsort(descending=True)
    top = order[:TOP_CONTRIBUTIONS]
    listed = [{"input": int(k), "value": float(inputs[k]), "weight": float(weights[k]), "product": float(products[k])}
              for k in top]
    rest = float(products[order[TOP_CONTRIBUTIONS:]].sum()) if len(order) > TOP_CONTRIBUTIONS else 0.0
    return {"top": listed, "rest": rest, "rest_count": max(0, len(order) - TOP_CONTRIBUTIONS), "inputs": len(order),
            "sum": total, "bias": bias, "has_bias": linear.bias is not None, "z": total + bias}


# --------------------------------------------------------------------------- playground


def playground(image: torch.Tensor, kernel: Any, padding: Any, stride: Any) -> dict[str, Any]:
    """The book's edge experiment on any image (h, w): ``corr2d`` with an edited kernel, padding and
    stride, and the output-shape formula ``floor((n - k + p + s) / s)`` with its numbers."""
    if (not isinstance(kernel, list) or not 1 <= len(kernel) <= 5 or not all(isinstance(r, list) for r in kernel)
            or not 1 <= len(kernel[0]) <= 5 or any(len(r) != len(kernel[0]) for r in kernel)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for r in kernel for v in r)):
        raise ConfigError("the kernel must be 1 to 5 rows of 1 to 5 finite numbers each, all rows as long")
    padding, stride = whole_number(padding, "padding", 0, 10), whole_number(stride, "stride", 1, 10)
    K = torch.tensor(kernel, dtype=torch.float32)
    n = tuple(image.shape)
    out_shape = ops.output_shape(n, tuple(K.shape), padding, stride)
    Y = ops.corr2d(image.float(), K, padding=padding, stride=stride)
    formula = [{"n": n[d], "k": K.shape[d], "p": 2 * padding, "s": stride, "out": out_shape[d]} for d in (0, 1)]
    output = [[v if math.isfinite(v) else None for v in row] for row in Y.tolist()]   # JSON has no inf
    return {"output": output, "shape": list(out_shape), "formula": formula}
