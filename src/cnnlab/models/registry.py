"""The model registry: ``@register_model`` on a factory, ``create(name, **options)``, ``list_models()``.

A factory takes ``num_classes`` and ``in_channels`` plus its own keyword options and returns an
``nn.Module`` mapping (B, in_channels, H, W) images to (B, num_classes) logits.  The engine only
ever builds models through :func:`create`, so new families plug in without touching it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

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
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str | None = None, *, description: str = "", input_size: int = 28,
                   family: str = "", **defaults: Any) -> Callable[[Factory], Factory]:
    """Register ``factory`` under ``name`` (default: the function's name).

    Extra keyword ``defaults`` are options passed to the factory for this name, which lets one
    factory serve several named variants (``resnet18`` and ``resnet18_224``, say).
    """

    def decorator(factory: Factory) -> Factory:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[key] = ModelInfo(key, factory, doc, input_size, family, dict(defaults))
        return factory

    return decorator


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so the registry module stays import-light.
    import cnnlab.models.families  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, *, num_classes: int = 10, in_channels: int = 1, **options: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names or options are a ConfigError."""
    info = get_model_info(name)
    kwargs = {**info.defaults, **options}
    params = inspect.signature(info.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = sorted(set(params) - {"num_classes", "in_channels"})
            raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; "
                              f"its options are: {', '.join(allowed) or 'none'}")
    try:
        return info.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {exc}") from exc
