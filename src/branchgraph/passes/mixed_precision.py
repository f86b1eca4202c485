"""``precision``: run the graph under autocast (bf16 on CPU, fp16 or bf16 on CUDA), returning float32."""

from __future__ import annotations

import torch
from torch import fx
from torch.amp.autocast_mode import _enter_autocast, _exit_autocast

from branchgraph.passes.base import check_mode, finish, start


def precision(
    gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False, dtype: torch.dtype | None = None
) -> fx.GraphModule:
    """Wrap the whole graph in ``torch.autocast`` for the device of its parameters and cast outputs back to
    the input's float dtype. Lossy by design: see the verification tolerance for reduced precision.
    ``dtype`` defaults to bfloat16 on CPU and float16 on CUDA (train with a grad scaler then)."""
    check_mode(mode)
    gm, report = start(gm, "precision", inplace)
    params = list(gm.parameters())
    device = params[0].device.type if params else "cpu"
    dtype = dtype or (torch.float16 if device == "cuda" else torch.bfloat16)
    nodes = list(gm.graph.nodes)
    last_input = [n for n in nodes if n.op == "placeholder"][-1]
    output = next(n for n in nodes if n.op == "output")
    with gm.graph.inserting_after(last_input):
        ctx = gm.graph.call_function(_enter_autocast, (device, dtype, True, None))
    with gm.graph.inserting_before(output):
        result = output.args[0]
        if isinstance(result, fx.Node):
            cast = gm.graph.call_method("float", (result,))
            output.args = (cast,)
        gm.graph.call_function(_exit_autocast, (ctx,))
    report.changed.append(f"autocast to {str(dtype).removeprefix('torch.')} on {device}")
    return finish(gm, report)
