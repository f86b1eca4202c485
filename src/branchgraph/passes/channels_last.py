"""``layout``: channels_last memory format for 4-D inputs and conv weights (oneDNN and cuDNN prefer NHWC)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from branchgraph.kernels import REASON, nchw, strided_pointwise
from branchgraph.passes.base import PassReport, check_mode, finish, start

_CONV2D = (F.conv2d, torch.conv2d, torch.ops.aten.conv2d.default)  # symbolic_trace's, torch.export's


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nchw(gm: fx.GraphModule, user: fx.Node, value: fx.Node) -> None:
    """Make ``user`` read ``value`` in NCHW (``branchgraph.kernels.nchw`` just before it)."""
    with gm.graph.inserting_before(user):
        converted = gm.graph.call_function(nchw, (value,))
    converted.meta.update(value.meta)
    user.replace_input_with(value, converted)


def _keep_nchw(gm: fx.GraphModule, report: PassReport) -> list[nn.Conv2d]:
    """Training: route the convolutions whose channels_last weight gradient oneDNN miscomputes through NCHW (see
    ``branchgraph.kernels``); returns their modules, whose weights must stay NCHW."""
    kept: list[nn.Conv2d] = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(conv := gm.get_submodule(str(node.target)), nn.Conv2d):
            if not strided_pointwise(conv.weight.shape, conv.stride) or not isinstance(node.args[0], fx.Node):
                continue
            kept.append(conv)
            _nchw(gm, node, node.args[0])
        elif node.op == "call_function" and node.target in _CONV2D and len(node.args) >= 2:
            weight = node.args[1]
            stride = node.args[3] if len(node.args) > 3 else node.kwargs.get("stride", 1)
            shape = _shape(weight)
            if shape is None or not strided_pointwise(shape, stride) or not isinstance(node.args[0], fx.Node):
                continue
            _nchw(gm, node, node.args[0])
            _nchw(gm, node, weight)
        else:
            continue
        report.skipped.append(f"{node.target if node.op == 'call_module' else node.name}: {REASON}")
    return kept


def layout(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Convert 4-D parameters and buffers to channels_last and make each 4-D input channels_last on entry.
    Values are unchanged; only strides differ (results agree to float rounding, convs may pick other kernels).
    In train mode the strided 1x1 convolutions over few channels stay NCHW (``branchgraph.kernels``).
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
    kept = _keep_nchw(gm, report) if mode == "train" else []
    count = sum(1 for p in gm.parameters() if p.dim() == 4) - len(kept)
    gm.to(memory_format=torch.channels_last)
    for conv in kept:
        conv.weight.data = nchw(conv.weight.data)
    report.changed.append(f"{count} 4-D parameters -> channels_last")
    return finish(gm, report)
