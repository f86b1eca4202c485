"""``prune``: remove dead nodes, identity modules, (in eval mode) dropout and branches that are provably zero."""

from __future__ import annotations

import torch
from torch import fx, nn

from branchgraph.graph.tracing import eliminate_dead_code
from branchgraph.passes.base import DROPOUTS, check_mode, finish, start


def zeros_like_batch(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``(batch of x, *shape)``: the output of an all-zero conv, without depending on its input."""
    return x.new_zeros((x.shape[0], *shape))


def _is_zero_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and not module.weight.any()
            and (module.bias is None or not module.bias.any()))


def prune(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Drop ``nn.Identity`` calls, dropout when ``mode='eval'`` (it is the identity then) and unused nodes.
    In eval mode a conv whose weights and bias are all zero becomes a zeros tensor of its output shape (exact
    for finite inputs), so the branch that fed it becomes dead and goes too; that shape is the captured one,
    so such a graph is specialised to the captured spatial size.

    Dropout and zero convs stay in training mode: removing them would change what the model learns.
    """
    check_mode(mode)
    gm, report = start(gm, "prune", inplace)
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if isinstance(module, nn.Identity) or (isinstance(module, DROPOUTS) and mode == "eval"):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            report.changed.append(f"removed {node.target} ({type(module).__name__})")
        elif isinstance(module, DROPOUTS):
            report.skipped.append(f"kept {node.target}: dropout is active in training mode")
        elif _is_zero_conv(module) and "tensor_meta" in node.meta:
            if mode == "train":
                report.skipped.append(f"kept {node.target}: all-zero conv, but its weights train")
                continue
            shape = tuple(node.meta["tensor_meta"].shape[1:])
            with gm.graph.inserting_before(node):
                zeros = gm.graph.call_function(zeros_like_batch, (placeholder, shape))
            node.replace_all_uses_with(zeros)
            gm.graph.erase_node(node)
            report.changed.append(f"replaced {node.target} (all-zero weights) by zeros")
    before = len(gm.graph.nodes)
    eliminate_dead_code(gm.graph)
    if len(gm.graph.nodes) < before:
        report.changed.append(f"removed {before - len(gm.graph.nodes)} unused nodes")
    return finish(gm, report)
