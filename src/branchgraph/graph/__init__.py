"""Graph capture (torch.fx) and analysis: shapes, forks/joins/branches, params, MACs, measured memory."""

from branchgraph.graph.record import Measurement, measure
from branchgraph.graph.structure import Block, Branch, find_blocks, forks, joins
from branchgraph.graph.tables import BranchRow, ModuleRow, Summary, summary
from branchgraph.graph.tracing import Capture, InputShapeError, capture
from branchgraph.heap import heap_in_use

__all__ = [
    "Block", "Branch", "BranchRow", "Capture", "InputShapeError", "Measurement", "ModuleRow", "Summary",
    "capture", "find_blocks", "forks", "heap_in_use", "joins", "measure", "summary",
]
