"""branchgraph: understand, optimise and train multi-branch (Inception) networks on PyTorch."""

from branchgraph.api import summary
from branchgraph.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "summary"]
