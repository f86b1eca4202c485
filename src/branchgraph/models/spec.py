"""Models from outside the registry: ``package.module:factory``, ``path/to/file.py:factory`` or ``timm:NAME``.

A spec names a callable that returns an ``nn.Module`` (a function or a module class; an ``nn.Module`` instance
is taken as is), imported the way ``uvicorn app:app`` imports: the current folder is on the import path. Any
failure (no such module or file, no such attribute, the factory raises, not a module) is one ConfigError line.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError, raise_if_out_of_memory


def is_spec(name: str) -> bool:
    """Whether ``name`` is a model spec (has a ``:``) rather than a registry name."""
    return ":" in name


def _import_file(path: str, spec: str, what: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} spec {spec!r}: no file {path}")
    name = f"branchgraph_user_{file.stem}_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    found = importlib.util.spec_from_file_location(name, file)
    if found is None or found.loader is None:
        raise ConfigError(f"{what} spec {spec!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{what} spec {spec!r}: importing {path} raised {type(exc).__name__}: {exc}") from None
    return module


def _import_module(path: str, spec: str, what: str) -> ModuleType:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{what} spec {spec!r}: no module named {exc.name!r} (install it, or run from the "
                          "folder that holds it)") from None
    except Exception as exc:
        raise ConfigError(f"{what} spec {spec!r}: importing {path} raised {type(exc).__name__}: {exc}") from None


def load_attribute(spec: str, what: str) -> Any:
    """The object ``spec`` (``package.module:name`` or ``path/to/file.py:name``) names, its module imported
    (``what`` the spec is for, in messages: "model", "data")."""
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise ConfigError(f"{what} spec {spec!r} must look like package.module:factory or path/to/file.py:factory")
    module = _import_file(where, spec, what) if where.endswith(".py") else _import_module(where, spec, what)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{what} spec {spec!r}: {where} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


def _timm(name: str, kwargs: dict[str, Any], spec: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model spec {spec!r} needs timm, which is not installed: pip install timm") from None
    except Exception as exc:  # timm imports torchvision, whose compiled operators must match this torch
        raise ConfigError(f"model spec {spec!r}: importing timm failed ({_first_line(exc)}); its torchvision "
                          "does not match torch " + torch.__version__.split("+")[0] + ": install the "
                          "torchvision built for it (pip install 'torchvision==<the matching version>' with "
                          "torch pinned, e.g. -c constraints.txt)") from None
    if name not in timm.list_models():
        raise ConfigError(f"model spec {spec!r}: timm has no model {name!r} (see timm.list_models())")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)  # never download weights
    except Exception as exc:
        raise ConfigError(f"model spec {spec!r}: timm.create_model raised {type(exc).__name__}: {exc}") from None


def load_spec(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model ``spec`` names, calling its factory with ``kwargs``."""
    kwargs = kwargs or {}
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise ConfigError(f"model spec {spec!r} must look like package.module:factory, path/to/file.py:factory "
                          "or timm:NAME")
    if where == "timm":
        return _timm(attribute, kwargs, spec)
    target = load_attribute(spec, "model")
    if isinstance(target, nn.Module):
        if kwargs:
            raise ConfigError(f"model spec {spec!r} names a module instance, which takes no model kwargs")
        return copy.deepcopy(target)
    if not callable(target):
        raise ConfigError(f"model spec {spec!r}: {attribute} is a {type(target).__name__}, not a factory")
    try:
        model = target(**kwargs)
    except Exception as exc:
        raise_if_out_of_memory(exc, f" building model spec {spec!r}")
        raise ConfigError(f"model spec {spec!r}: {attribute}({', '.join(kwargs)}) raised "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model spec {spec!r}: {attribute}() returned a {type(model).__name__}, not an "
                          "nn.Module")
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def check_fits(model: nn.Module, name: str, input_size: tuple[int, ...], classes: int) -> None:
    """Raise ConfigError unless ``model`` (on a copy, in eval mode) takes a batch of ``input_size`` images and
    gives ``classes`` logits per image."""
    probe = copy.deepcopy(model).eval()
    shape = "x".join(map(str, input_size))
    try:
        with torch.no_grad():
            out = probe(torch.zeros(2, *input_size))
    except Exception as exc:
        raise_if_out_of_memory(exc, f" trying model {name} on {shape} images")
        first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if first is not None and first.in_channels != input_size[0]:
            raise ConfigError(f"model {name} takes {first.in_channels}-channel images, not {input_size[0]} "
                              f"({_first_line(exc)}); give it {input_size[0]} input channel(s) (e.g. model kwargs "
                              f"{{\"in_chans\": {input_size[0]}}})") from None
        raise ConfigError(f"model {name} does not take {shape} images ({_first_line(exc)}): they are too small for "
                          "it; set resize to an image size it takes (e.g. 224 for most ImageNet models, 299 for "
                          "Inception-v3)", "resize") from None
    logits = out[0] if isinstance(out, tuple) else out
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, classes):
        found = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model {name} gives {found} for a batch of 2; training needs {classes} logits per "
                          f"image (e.g. model kwargs {{\"num_classes\": {classes}}})")
