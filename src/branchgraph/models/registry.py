"""Model registry: ``@register_model`` factories and ``create_model(name, **kw)`` (timm-style); a name with a
``:`` is a spec for a model outside the registry (``branchgraph.models.spec``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError, raise_if_out_of_memory
from branchgraph.models.spec import is_spec, load_spec


@dataclass(frozen=True)
class ModelInfo:
    """What `branchgraph models` prints about a registered model."""

    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int] | None  # None: unknown (a model spec's)
    num_classes: int | None  # None for feature extractors (no classifier head), and unknown for a spec
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


def model_table() -> list[dict[str, Any]]:
    """Every registered model with its input size, class count, parameter count and description."""
    return [{"name": name, "input_size": list(info.input_size or ()), "num_classes": info.num_classes,
             "params": sum(p.numel() for p in create_model(name).parameters()), "description": info.description}
            for name, info in ((n, model_info(n)) for n in list_models())]


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name`` (for a spec: its factory, size and classes unknown); an unknown name
    raises ConfigError listing the known ones."""
    if is_spec(name):
        return ModelInfo(name, lambda **kwargs: load_spec(name, kwargs), None, None, f"from {name}")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model (or the model a spec names); unknown or invalid keyword arguments raise
    ConfigError."""
    if is_spec(name):
        return load_spec(name, dict(kwargs))
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
    except (RuntimeError, MemoryError) as exc:
        raise_if_out_of_memory(exc, f" building model {name!r} with {kwargs}")
        raise


def resolve_model(
    model: nn.Module | str, input_size: tuple[int, ...] | None = None, kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
) -> tuple[str, nn.Module, tuple[int, ...], int | None]:
    """(name, module, input size without the batch, classes or None) of a registry name, spec or module; the
    input size is required where the registry does not know it. A name's weights are drawn after seeding with
    ``seed`` (when given), so the same name and seed give the same weights on every path."""
    if isinstance(model, str):
        info = model_info(model)
        if seed is not None:
            torch.manual_seed(seed)
        module, name = create_model(model, **(kwargs or {})), model
        size = input_size or info.input_size
        classes = info.num_classes
    else:
        module, name, size, classes = model, type(model).__name__, input_size, None
    if size is None:
        where = "comes from outside the registry" if isinstance(model, str) else "is a module of your own"
        raise ConfigError(f"model {name!r} {where}, so its input size is unknown: give input_size as C,H,W",
                          "input_size")
    return name, module, tuple(size), classes
