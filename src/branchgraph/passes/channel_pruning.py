"""``prune_channels``: structured, lossy pruning of the channels between two convolutions by magnitude.

Every chain conv -> [BatchNorm] -> ReLU -> conv whose intermediate values feed nothing else (the 1x1
"reduce" convs of an Inception block's 3x3 and 5x5 branches, for one) loses the ``amount`` fraction of its
channels with the smallest filter L1 norm (times |gamma| when a BatchNorm follows): the first conv's filters,
the BatchNorm's entries and the second conv's input slices go together. Accuracy drops; fine-tune after.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from branchgraph.passes.base import check_mode, finish, start
from branchgraph.passes.names import is_fused


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _module(gm: fx.GraphModule, node: fx.Node | None, kind: type[nn.Module]) -> nn.Module | None:
    if node is None or node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, kind) else None


def _set(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _chain(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Conv2d, nn.BatchNorm2d | None, nn.Conv2d, list[str]] | None:
    """(first conv, its BatchNorm or None, second conv, their targets) when ``node`` starts a prunable chain."""
    first = _module(gm, node, nn.Conv2d)
    if first is None or first.groups != 1 or is_fused(first):
        return None
    step = _only_user(node)
    bn = _module(gm, step, nn.BatchNorm2d)
    targets = [str(node.target)]
    if bn is not None:
        targets.append(str(step.target))
        step = _only_user(step)
    if _module(gm, step, nn.ReLU) is None:
        return None
    consumer = _only_user(step)
    second = _module(gm, consumer, nn.Conv2d)
    if second is None or second.groups != 1 or is_fused(second) or len(consumer.args) != 1:
        return None
    return first, bn, second, [*targets, str(consumer.target)]


def prune_channels(
    gm: fx.GraphModule, *, amount: float = 0.5, mode: str = "eval", inplace: bool = False
) -> fx.GraphModule:
    """Remove ``amount`` (0..1) of the channels of every prunable conv -> [BN] -> ReLU -> conv chain."""
    check_mode(mode)
    if not 0.0 < amount < 1.0:
        raise ValueError(f"amount must be between 0 and 1 (exclusive), got {amount}")
    gm, report = start(gm, "prune_channels", inplace)
    for node in list(gm.graph.nodes):
        chain = _chain(gm, node)
        if chain is None:
            continue
        first, bn, second, targets = chain
        score = first.weight.detach().abs().sum(dim=(1, 2, 3))
        if bn is not None:
            score = score * bn.weight.detach().abs()
        keep_count = max(1, round(first.out_channels * (1.0 - amount)))
        keep = torch.sort(torch.topk(score, keep_count).indices).values
        new_first = nn.Conv2d(first.in_channels, keep_count, first.kernel_size, first.stride, first.padding,
                              first.dilation, 1, first.bias is not None, first.padding_mode)
        new_second = nn.Conv2d(keep_count, second.out_channels, second.kernel_size, second.stride, second.padding,
                               second.dilation, 1, second.bias is not None, second.padding_mode)
        with torch.no_grad():
            new_first.weight.copy_(first.weight[keep])
            if first.bias is not None:
                new_first.bias.copy_(first.bias[keep])
            new_second.weight.copy_(second.weight[:, keep])
            if second.bias is not None:
                new_second.bias.copy_(second.bias)
        _set(gm, targets[0], new_first.to(first.weight.device))
        _set(gm, targets[-1], new_second.to(second.weight.device))
        if bn is not None:
            new_bn = nn.BatchNorm2d(keep_count, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
            state = {k: (v[keep] if v.dim() == 1 else v) for k, v in bn.state_dict().items()}
            new_bn.load_state_dict(state)
            _set(gm, targets[1], new_bn.to(first.weight.device).train(bn.training))
        report.changed.append(f"{targets[0]} -> {targets[-1]}: {first.out_channels} -> {keep_count} channels")
    return finish(gm, report)
