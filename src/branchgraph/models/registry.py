"""Model registry: ``@register_model`` factories and ``create_model(name, **kw)`` (timm-style)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from branchgraph.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What `branchgraph models` prints about a registered model."""

    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int | None  # None for feature extractors (no classifier head)
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, input_size: tuple[int, int, int], num_classes: int | None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under ``name``; its docstring's first line becomes the description."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(name, factory, input_size, num_classes, doc[0] if doc else "")
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises ConfigError listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; unknown or invalid keyword arguments raise ConfigError."""
    info = model_info(name)
    params = inspect.signature(info.factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"model {name!r} takes no option {', '.join(unknown)}; "
            f"its options are: {', '.join(params) or 'none'}"
        )
    try:
        return info.factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
