"""``layout``: channels_last memory format for 4-D inputs and conv weights (oneDNN and cuDNN prefer NHWC)."""

from __future__ import annotations

import torch
from torch import fx

from branchgraph.passes.base import check_mode, finish, start


def layout(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Convert 4-D parameters and buffers to channels_last and make each 4-D input channels_last on entry.
    Values are unchanged; only strides differ (results agree to float rounding, convs may pick other kernels).
    Needs shapes on the placeholders (``branchgraph.graph.tracing``); inputs without them are left alone."""
    check_mode(mode)
    gm, report = start(gm, "layout", inplace)
    for node in list(gm.graph.nodes):
        if node.op != "placeholder":
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None or len(getattr(meta, "shape", ())) != 4:
            report.skipped.append(f"input {node.name}: not known to be 4-D")
            continue
        with gm.graph.inserting_after(node):
            converted = gm.graph.call_method("contiguous", (node,), {"memory_format": torch.channels_last})
        node.replace_all_uses_with(converted, delete_user_cb=lambda user, c=converted: user is not c)
        converted.meta["tensor_meta"] = meta
        report.changed.append(f"input {node.name} -> channels_last")
    count = sum(1 for p in gm.parameters() if p.dim() == 4)
    gm.to(memory_format=torch.channels_last)
    report.changed.append(f"{count} 4-D parameters -> channels_last")
    return finish(gm, report)
