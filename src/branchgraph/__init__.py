"""branchgraph: understand, optimise and train multi-branch (Inception) networks on PyTorch.

Every entry point takes a module, a registry name or a model spec: ``bg.summary("googlenet-d2l")``,
``bg.optimize(my_net, (3, 224, 224))``, ``bg.plan("googlenet-d2l", budget=0.25)``, ``bg.branches(...)``,
``bg.bench(...)``, ``bg.train(...)``.
"""

from branchgraph.api import bench, branches, optimize, plan, report, summary, train
from branchgraph.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "bench", "branches", "create_model", "list_models", "optimize", "plan", "report", "summary",
           "train"]
