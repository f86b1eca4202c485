"""Run passes in order, lint the graph after each, and name the pass (and those before it) on failure."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import fx

from branchgraph.errors import BranchgraphError
from branchgraph.passes.batchnorm_folding import fold_bn
from branchgraph.passes.branch_parallelism import parallel
from branchgraph.passes.channels_last import layout
from branchgraph.passes.horizontal_fusion import fuse_parallel
from branchgraph.passes.inplace_ops import inplace
from branchgraph.passes.mixed_precision import precision
from branchgraph.passes.pruning import prune

Pass = Callable[..., fx.GraphModule]
PASSES: dict[str, Pass] = {
    "prune": prune, "fold_bn": fold_bn, "fuse_parallel": fuse_parallel, "inplace": inplace,
    "layout": layout, "precision": precision, "parallel": parallel,
}
# Lossless passes only: precision (bf16/fp16) is opt-in, and on CPUs without bf16 instructions it is slower.
DEFAULT_PASSES: dict[str, tuple[str, ...]] = {
    "eval": ("prune", "fold_bn", "fuse_parallel", "inplace", "layout"),
    "train": ("prune", "fuse_parallel", "inplace", "layout"),
}


class PassError(BranchgraphError):
    """A pass failed or left a malformed graph."""


def resolve(names: Sequence[str] | None, mode: str) -> list[str]:
    """The pass names to run (the mode's defaults when None); unknown names raise PassError listing the known."""
    chosen = list(DEFAULT_PASSES[mode] if names is None else names)
    unknown = [n for n in chosen if n not in PASSES]
    if unknown:
        raise PassError(f"unknown pass {', '.join(unknown)}; choose from {', '.join(PASSES)}")
    for name in chosen[:-1]:
        reason = getattr(PASSES[name], "must_run_last", None)
        if reason:
            raise PassError(f"pass {name} must come last: {reason}")
    return chosen


def run_passes(gm: fx.GraphModule, names: Sequence[str], mode: str, inplace: bool = False) -> fx.GraphModule:
    """Apply ``names`` in order to one copy of ``gm`` (``gm`` itself with ``inplace``; each pass works on the copy in
    place: a deep copy per pass cost more than the passes themselves); ``graph.lint()`` after each."""
    done: list[str] = []
    gm = gm if inplace else copy.deepcopy(gm)
    for name in names:
        try:
            gm = PASSES[name](gm, mode=mode, inplace=True)
            gm.graph.lint()
        except Exception as exc:  # named and re-raised: which pass broke, after which ones
            after = f" (after {', '.join(done)})" if done else ""
            raise PassError(f"pass {name} failed{after}: {str(exc).strip().splitlines()[0]}") from exc
        done.append(name)
    return gm
