"""Training memory: checkpointing planned under a budget, and reversible couplings (constant memory in depth)."""

from branchgraph.memory.budget import parse_budget
from branchgraph.memory.checkpointing import CheckpointPlan, apply_plan, plan, remove_plan
from branchgraph.memory.measure import VariantResult, compare_variants, step_memory, table
from branchgraph.memory.problem import Region
from branchgraph.memory.reversible import AdditiveCoupling, ReversibleSequence

__all__ = ["AdditiveCoupling", "CheckpointPlan", "Region", "ReversibleSequence", "VariantResult", "apply_plan",
           "compare_variants", "parse_budget", "plan", "remove_plan", "step_memory", "table"]
