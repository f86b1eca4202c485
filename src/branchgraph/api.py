"""The top-level Python API: analyses that take a registry name or model spec as well as a module."""

from __future__ import annotations

from typing import Any

from torch import nn

from branchgraph.graph import summary as graph_summary
from branchgraph.graph.summary import Summary
from branchgraph.models.registry import resolve_model


def summary(
    model: nn.Module | str, input_size: tuple[int, ...] | None = None, batch: int = 1, seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> Summary:
    """``branchgraph.graph.summary`` of ``model``: a registry name, model spec (``model_kwargs`` for its factory)
    or module; ``input_size`` is required where the registry does not know it."""
    name, module, size, _ = resolve_model(model, input_size, model_kwargs)
    return graph_summary(module, size, batch, seed, name)
