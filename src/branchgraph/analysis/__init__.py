"""Branch analytics: how the parallel branches of each block share the gradient."""

from branchgraph.analysis.branches import BranchGradient, ForkGradients, fork_gradients

__all__ = ["BranchGradient", "ForkGradients", "fork_gradients"]
