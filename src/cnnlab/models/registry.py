"""The model registry: ``@register_model`` on a factory, ``create(name, **options)``, ``list_models()``.

A factory takes ``num_classes`` and ``in_channels`` plus its own keyword options and returns an
``nn.Module`` mapping (B, in_channels, H, W) images to (B, num_classes) logits.  The engine only
ever builds models through :func:`create`, so new families plug in without touching it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from cnnlab.errors import ConfigError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Factory
    description: str
    input_size: int = 28
    """Side of the square input the model is meant for (the loader resizes to it)."""
    family: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str | None = None, *, description: str = "", input_size: int = 28,
                   family: str = "") -> Callable[[Factory], Factory]:
    """Register ``factory`` under ``name`` (default: the function's name), for ``input_size``-pixel inputs,
    in ``family``; ``description`` defaults to the first line of the factory's docstring."""

    def decorator(factory: Factory) -> Factory:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[key] = ModelInfo(key, factory, doc, input_size, family)
        return factory

    return decorator


def _ensure_loaded() -> None:
    # Importing the families registers them; they import this module (register_model), so not at its top.
    import cnnlab.models.families  # noqa: F401, PLC0415  cycle: the families import this registry


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def check_option(model: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` of option ``key`` checked against the factory's annotation (bool, int, float, str).

    Options arrive as JSON or plain strings from ``--option key=value``; a loose reading would turn
    ``batch_norm=no`` into a truthy string, so each simple type accepts exactly its own values.
    Booleans take JSON true/false and 1/0; ints are positive; floats are finite numbers.
    """
    annotation = getattr(annotation, "__name__", annotation)
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"model option {key} of {model!r} must be true or false (or 1 or 0), got {value!r}")
    if annotation == "int" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"model option {key} of {model!r} must be a positive integer, got {value!r}")
    if annotation == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
        raise ConfigError(f"model option {key} of {model!r} must be a finite number, got {value!r}")
    if annotation == "str" and not isinstance(value, str):
        raise ConfigError(f"model option {key} of {model!r} must be a name, got {value!r}")
    return value


def create(name: str, *, num_classes: int = 10, in_channels: int = 1, **options: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names, options or values are a ConfigError."""
    info = get_model_info(name)
    for label, value in (("number of classes", num_classes), ("input channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"model {name!r} needs a positive integer {label}, got {value!r}")
    kwargs = dict(options)
    params = inspect.signature(info.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = sorted(set(params) - {"num_classes", "in_channels"})
            raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; "
                              f"its options are: {', '.join(allowed) or 'none'}")
    kwargs = {key: check_option(name, key, value, params[key].annotation) if key in params else value
              for key, value in kwargs.items()}
    try:
        return info.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        # RuntimeError: torch refusing a layer's shape (a kernel larger than its input, say) that the
        # family's own checks did not foresee; still the options' fault, still one line.
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {detail}") from exc


def sized_options(name: str, options: dict[str, Any], image_size: int) -> dict[str, Any]:
    """``options`` with ``image_size`` set for a model whose layers are sized by it (LeNet, AlexNet, VGG),
    unless the options give it already or it is the model's own size."""
    info = get_model_info(name)
    if "image_size" in inspect.signature(info.factory).parameters and "image_size" not in options \
            and image_size != info.input_size:
        return {**options, "image_size": image_size}
    return dict(options)


def check_model(name: str, options: dict[str, Any], *, num_classes: int = 10, in_channels: int = 1) -> None:
    """Raise the ConfigError :func:`create` would, without allocating weights or computing anything:
    the model is built on PyTorch's meta device, where layers only carry shapes."""
    with torch.device("meta"):
        create(name, num_classes=num_classes, in_channels=in_channels, **options)
