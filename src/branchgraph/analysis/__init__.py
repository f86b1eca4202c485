"""Branch analytics: how the parallel branches of each block share the gradient."""

from branchgraph.analysis.branch_stats import BranchStats
from branchgraph.analysis.forks import BranchGradient, ForkGradients, fork_gradients
from branchgraph.analysis.monitor import BranchMonitor

__all__ = ["BranchGradient", "BranchMonitor", "BranchStats", "ForkGradients", "fork_gradients"]
