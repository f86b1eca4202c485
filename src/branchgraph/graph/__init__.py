"""Graph capture (torch.fx) and analysis: shapes, forks/joins/branches, params, MACs, measured memory."""

from branchgraph.graph.capture import Capture, InputShapeError, capture
from branchgraph.graph.record import Measurement, heap_in_use, measure
from branchgraph.graph.structure import Block, Branch, find_blocks, forks, joins
from branchgraph.graph.summary import BranchRow, ModuleRow, Summary, summary

__all__ = [
    "Block", "Branch", "BranchRow", "Capture", "InputShapeError", "Measurement", "ModuleRow", "Summary",
    "capture", "find_blocks", "forks", "heap_in_use", "joins", "measure", "summary",
]
