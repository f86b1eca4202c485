"""``fold_bn``: fold eval-mode BatchNorm into the preceding conv (torch.fx's own conv-BN fusion)."""

from __future__ import annotations

from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from branchgraph.passes.base import check_mode, finish, start


def fold_bn(gm: fx.GraphModule, *, mode: str = "eval", inplace: bool = False) -> fx.GraphModule:
    """In eval mode, replace conv -> BatchNorm by one conv with folded weights; skipped in training mode,
    where BatchNorm normalises with batch statistics and cannot be folded. fx's fusion already leaves a conv
    alone when its output has other users or its BN tracks no running statistics."""
    check_mode(mode)
    gm, report = start(gm, "fold_bn", inplace)
    bns = [str(n.target) for n in gm.graph.nodes
           if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.BatchNorm2d)]
    if mode == "train":
        report.skipped.append(f"{len(bns)} BatchNorm layers kept: training mode uses batch statistics")
        return finish(gm, report)
    gm.eval()
    fused = fuse(gm, inplace=True, no_trace=True)
    left = {str(n.target) for n in fused.graph.nodes if n.op == "call_module"}
    report.changed += [f"folded {name} into its conv" for name in bns if name not in left]
    report.skipped += [f"kept {name}: its conv has other users or it has no running stats" for name in bns
                       if name in left]
    fused.meta.update(gm.meta)
    return finish(fused, report)
