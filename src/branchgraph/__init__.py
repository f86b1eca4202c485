"""branchgraph: understand, optimise and train multi-branch (Inception) networks on PyTorch.

Every entry point takes a module, a registry name or a model spec: ``bg.summary("googlenet-d2l")``,
``bg.optimize(my_net, (3, 224, 224))``, ``bg.plan("googlenet-d2l", budget=0.25)``, ``bg.branches(...)``,
``bg.bench(...)``, ``bg.train(...)``, ``bg.BranchMonitor(net, input_size)`` in your own loop.

The names below are imported on first use (PEP 562), so that ``import branchgraph`` and ``branchgraph --help``
do not pay for importing torch until something needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
_WHERE = {
    **dict.fromkeys(("bench", "bench_parallel", "branches", "compare", "draw", "optimize", "plan", "report", "summary"),
                    "branchgraph.api"),
    **dict.fromkeys(("evaluate", "prune", "resume", "train"), "branchgraph.api_runs"),
    "BranchMonitor": "branchgraph.analysis.monitor",
    "Mode": "branchgraph.choices",
    "Precision": "branchgraph.choices",
    "create_model": "branchgraph.models",
    "list_models": "branchgraph.models",
}
__all__ = [
    "BranchMonitor",
    "Mode",
    "Precision",
    "__version__",
    "bench",
    "bench_parallel",
    "branches",
    "compare",
    "create_model",
    "draw",
    "evaluate",
    "list_models",
    "optimize",
    "plan",
    "prune",
    "report",
    "resume",
    "summary",
    "train",
]

if TYPE_CHECKING:
    from branchgraph.analysis.monitor import BranchMonitor
    from branchgraph.api import (
        bench,
        bench_parallel,
        branches,
        compare,
        draw,
        optimize,
        plan,
        report,
        summary,
    )
    from branchgraph.api_runs import evaluate, prune, resume, train
    from branchgraph.choices import Mode, Precision
    from branchgraph.models import create_model, list_models


def __getattr__(name: str) -> Any:
    """The API's names and the subpackages (``bg.models``, ``bg.memory``...), imported on first use."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"branchgraph.{name}") is not None:
        value = importlib.import_module(f"branchgraph.{name}")
    else:
        raise AttributeError(f"module 'branchgraph' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
