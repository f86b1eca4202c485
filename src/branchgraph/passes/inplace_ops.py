"""``inplace`` (memory reuse): ReLUs overwrite their input where autograd allows it."""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from branchgraph.passes.base import check_mode, finish, start

# Producers whose backward does not read their output, so an in-place ReLU after them is safe in training.
SAFE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SAFE_FUNCTIONS = (torch.cat, torch.add, operator.add)


def _safe_input(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """None when ``node`` (a ReLU call) may overwrite its input, else the reason it may not."""
    if len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return "called with extra arguments"
    producer = node.args[0]
    if len(producer.users) != 1:
        return f"its input {producer.name} is used {len(producer.users)} times"
    if producer.op == "call_module" and isinstance(gm.get_submodule(str(producer.target)), SAFE_MODULES):
        return None
    if producer.op == "call_function" and producer.target in SAFE_FUNCTIONS:
        return None
    return f"its input comes from {producer.name}, whose backward (or view semantics) needs it intact"


def inplace(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Make ``nn.ReLU`` modules in-place when every call site's input has no other user and comes from a conv,
    linear, BatchNorm, cat or add (none of which reads its output in backward). Saves one activation each."""
    check_mode(mode)
    gm, report = start(gm, "inplace", inplace)
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.ReLU):
            calls.setdefault(str(node.target), []).append(node)
    for target, nodes in calls.items():
        module = gm.get_submodule(target)
        if module.inplace:
            continue
        reasons = [r for r in (_safe_input(gm, n) for n in nodes) if r]
        if reasons:
            report.skipped.append(f"{target}: {reasons[0]}")
            continue
        module.inplace = True  # gm is this pass's own copy unless the caller asked for inplace
        report.changed.append(f"{target}: in place")
    return finish(gm, report)
