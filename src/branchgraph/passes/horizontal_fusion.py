"""``fuse_parallel``: horizontal fusion. Convolutions that read the same tensor with the same geometry become
one convolution whose output is split, so an Inception block's three 1x1 convs run as one larger GEMM.

Valid for training: the fused weight is the concatenation of the originals, so each original parameter's
gradient is a slice of the fused gradient (``original_parameters``), and state dicts convert both ways
(``to_original_state_dict`` / ``from_original_state_dict``), so checkpoints work with either model.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch import fx, nn

from branchgraph.graph.structure import common_prefix
from branchgraph.passes.base import check_mode, finish, start


class FusedConv2d(nn.Conv2d):
    """Sibling convs as one: out-channels concatenated; ``sources`` and ``splits`` map back to the originals."""

    def __init__(self, convs: list[nn.Conv2d], sources: list[str]) -> None:
        first = convs[0]
        super().__init__(
            first.in_channels, sum(c.out_channels for c in convs), first.kernel_size, first.stride, first.padding,
            first.dilation, first.groups, first.bias is not None, first.padding_mode,
            device=first.weight.device, dtype=first.weight.dtype,
        )
        with torch.no_grad():
            self.weight.copy_(torch.cat([c.weight for c in convs]))
            if self.bias is not None:
                self.bias.copy_(torch.cat([c.bias for c in convs]))
        self.weight.requires_grad_(first.weight.requires_grad)
        if self.bias is not None:
            self.bias.requires_grad_(first.bias.requires_grad)
        self.sources = list(sources)
        self.splits = [c.out_channels for c in convs]

    def pieces(self) -> list[tuple[str, slice]]:
        """(original conv path, its slice of the out-channels), in order."""
        out, start_at = [], 0
        for source, size in zip(self.sources, self.splits, strict=True):
            out.append((source, slice(start_at, start_at + size)))
            start_at += size
        return out


def _key(node: fx.Node, conv: nn.Conv2d) -> tuple[object, ...] | None:
    """What must match for two convs to fuse; None when this conv cannot take part."""
    if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    if conv.groups != 1 or isinstance(conv, FusedConv2d):
        return None
    return (node.args[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.padding_mode,
            conv.bias is not None, conv.weight.dtype, conv.weight.device, conv.weight.requires_grad)


def fuse_parallel(gm: fx.GraphModule, *, mode: str = "train", inplace: bool = False) -> fx.GraphModule:
    """Fuse every group of >= 2 Conv2d calls reading the same node with equal kernel size, stride, padding,
    dilation, padding mode, bias presence and groups == 1. Grouped convs are skipped (their channel groups
    would mix)."""
    check_mode(mode)
    gm, report = start(gm, "fuse_parallel", inplace)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    groups: dict[tuple[object, ...], list[fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        conv = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(conv, nn.Conv2d):
            key = _key(node, conv)
            if key is None:
                report.skipped.append(f"{node.target}: grouped, already fused or called with extra arguments")
            else:
                groups[key].append(node)
    counter = 0
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        targets = [str(n.target) for n in nodes]
        if len(set(targets)) != len(targets):
            report.skipped.append(f"{', '.join(targets)}: one module called twice on the same input")
            continue
        convs = [gm.get_submodule(t) for t in targets]
        fused = FusedConv2d(convs, targets)
        parent = common_prefix([t.rsplit(".", 1)[0] for t in targets if "." in t])
        name = f"{parent}.fused_conv{counter}" if parent else f"fused_conv{counter}"
        counter += 1
        gm.add_submodule(name, fused)
        first = min(nodes, key=order.__getitem__)
        with gm.graph.inserting_before(first):
            fused_node = gm.graph.call_module(name, (nodes[0].args[0],))
            split = gm.graph.call_function(torch.split, (fused_node, fused.splits), {"dim": 1})
            for index, node in enumerate(nodes):
                piece = gm.graph.call_function(operator.getitem, (split, index))
                node.replace_all_uses_with(piece)
        for node in nodes:
            gm.graph.erase_node(node)
        report.changed.append(f"{len(nodes)} convs -> {name}: {', '.join(targets)}")
    return finish(gm, report)
