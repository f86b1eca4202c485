"""branchgraph: understand, optimise and train multi-branch (Inception) networks on PyTorch.

Every entry point takes a module, a registry name or a model spec: ``bg.summary("googlenet-d2l")``,
``bg.optimize(my_net, (3, 224, 224))``, ``bg.plan("googlenet-d2l", budget=0.25)``, ``bg.branches(...)``,
``bg.bench(...)``, ``bg.train(...)``.
"""

from branchgraph.api import (
    bench,
    bench_parallel,
    branches,
    compare,
    draw,
    evaluate,
    optimize,
    plan,
    prune,
    report,
    resume,
    summary,
    train,
)
from branchgraph.choices import Mode, Precision
from branchgraph.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Mode", "Precision", "__version__", "bench", "bench_parallel", "branches", "compare", "create_model", "draw",
           "evaluate", "list_models", "optimize", "plan", "prune", "report", "resume", "summary", "train"]
