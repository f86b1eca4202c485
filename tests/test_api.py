"""The public API: one rule for every entry point (a module, or a registry name / model spec), all importable
from the package root, and no function hiding the module it lives in."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

import branchgraph


def test_no_function_shadows_a_module() -> None:
    """``branchgraph.X.Y`` is a module or it is not: a package attribute named like one of its submodules would
    make ``import branchgraph.X.Y`` and ``branchgraph.X.Y`` two different things."""
    for info in pkgutil.walk_packages(branchgraph.__path__, "branchgraph."):
        importlib.import_module(info.name)
    shadows = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("branchgraph") or not hasattr(module, "__path__"):  # packages hold re-exports
            continue
        for attr, value in vars(module).items():
            if f"{name}.{attr}" in sys.modules and not isinstance(value, types.ModuleType):
                shadows.append(f"{name}.{attr}")
    assert not shadows, shadows


def test_every_entry_point_takes_a_name_or_a_module() -> None:
    """``optimize``, ``plan``, ``branches`` and ``summary`` from the package root, each given a registry name
    (with ``model_kwargs`` and ``input_size``) and the same net as a module, from one call each."""
    import torch

    import branchgraph as bg

    size, kwargs = (1, 28, 28), {"width": 0.125}
    torch.manual_seed(0)
    module = bg.create_model("googlenet-fmnist", **kwargs)
    for model in ("googlenet-fmnist", module):
        options = {"model_kwargs": kwargs} if isinstance(model, str) else {}
        optimised, report = bg.optimize(model, size, mode="eval", **options)
        assert report.ok and isinstance(optimised, torch.nn.Module)
        _, checkpoints = bg.plan(model, size, budget=0.3, batch=4, measure=False, **options)
        assert checkpoints.regions and checkpoints.saved_bytes <= checkpoints.budget_bytes
        forks = bg.branches(model, size, **options)
        assert len(forks) >= 9 and all(f.sum_error < 1e-12 for f in forks)
        table = bg.summary(model, size, batch=2, **options)
        assert table.total["params"] == sum(p.numel() for p in module.parameters())
    assert next(module.parameters()).dtype == torch.float32  # branches works on a float64 copy


def test_a_module_without_an_input_size_is_refused_naming_the_parameter() -> None:
    import pytest
    import torch

    import branchgraph as bg
    from branchgraph.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        bg.optimize(torch.nn.Conv2d(1, 2, 3))
    assert err.value.param == "input_size" and "input_size" in str(err.value)
