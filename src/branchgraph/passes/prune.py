"""``prune``: remove dead nodes, identity modules and (in eval mode) dropout."""

from __future__ import annotations

from torch import fx, nn

from branchgraph.passes.base import check_mode, finish, start

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def prune(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Drop ``nn.Identity`` calls, dropout when ``mode='eval'`` (it is the identity then) and unused nodes.

    Dropout stays in training mode: removing it would change what the model learns.
    """
    check_mode(mode)
    gm, report = start(gm, "prune", inplace)
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
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    if len(gm.graph.nodes) < before:
        report.changed.append(f"removed {before - len(gm.graph.nodes)} unused nodes")
    return finish(gm, report)
