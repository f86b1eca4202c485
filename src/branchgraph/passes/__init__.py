"""Graph optimisation passes (one per file, ``GraphModule -> GraphModule``, copying by default) and
``optimize``, which runs them and verifies the result against the original model."""

from branchgraph.passes.base import PassReport, reports
from branchgraph.passes.batchnorm_folding import fold_bn
from branchgraph.passes.branch_parallelism import ParallelBranches, parallel
from branchgraph.passes.channel_pruning import prune_channels
from branchgraph.passes.channels_last import layout
from branchgraph.passes.horizontal_fusion import FusedConv2d, fuse_parallel
from branchgraph.passes.inplace_ops import inplace
from branchgraph.passes.manager import DEFAULT_PASSES, PASSES, PassError, run_passes
from branchgraph.passes.mixed_precision import precision
from branchgraph.passes.names import from_original_state_dict, original_parameters, to_original_state_dict
from branchgraph.passes.pipeline import OptimizeReport, optimize
from branchgraph.passes.pruning import prune
from branchgraph.passes.verification import Verification, VerificationError, output_error, verify_equal

__all__ = [
    "DEFAULT_PASSES",
    "PASSES",
    "FusedConv2d",
    "OptimizeReport",
    "ParallelBranches",
    "PassError",
    "PassReport",
    "Verification",
    "VerificationError",
    "fold_bn",
    "from_original_state_dict",
    "fuse_parallel",
    "inplace",
    "layout",
    "optimize",
    "original_parameters",
    "output_error",
    "parallel",
    "precision",
    "prune",
    "prune_channels",
    "reports",
    "run_passes",
    "to_original_state_dict",
    "verify_equal",
]
