"""Branch analytics: how the parallel branches of each block share the gradient."""

from branchgraph.analysis.branch_stats import BranchStats
from branchgraph.analysis.forks import BranchGradient, ForkGradients, fork_gradients

__all__ = ["BranchGradient", "BranchStats", "ForkGradients", "fork_gradients"]
