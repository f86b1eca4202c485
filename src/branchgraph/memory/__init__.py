"""Training memory: reversible couplings (constant activation memory in depth)."""

from branchgraph.memory.reversible import AdditiveCoupling, ReversibleSequence

__all__ = ["AdditiveCoupling", "ReversibleSequence"]
