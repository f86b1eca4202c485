"""``fold_bn``: fold eval-mode BatchNorm into the conv (or linear layer) before it.

Both forms a traced graph holds are folded: a BatchNorm module called as a leaf, and a functional
``F.batch_norm`` reading a module's statistics, as BatchNorm+activation modules that subclass ``BatchNorm2d``
(timm's ``BatchNormAct2d``) trace to. The weights are folded with ``torch.nn.utils.fusion`` (what torch.fx's own
conv-BN fusion uses); every BatchNorm left alone is reported with the reason.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from branchgraph.graph.structure import reads_metadata
from branchgraph.graph.tracing import eliminate_dead_code, node_module
from branchgraph.passes.base import check_mode, finish, start

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FUNCTIONAL = inspect.signature(F.batch_norm)
_ATEN_ORDER = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")


@dataclass
class _Norm:
    """One batch normalisation in the graph: its input node and where its statistics and affine terms live
    (get_attr targets, or None where absent), or why it cannot be read."""

    node: fx.Node
    name: str
    source: fx.Node | None = None
    targets: dict[str, str | None] | None = None
    eps: float = 1e-5
    problem: str | None = None


def _module_norm(gm: fx.GraphModule, node: fx.Node) -> _Norm | None:
    module = gm.get_submodule(str(node.target))
    if not isinstance(module, _BatchNorm):
        return None
    norm = _Norm(node, str(node.target), node.args[0] if node.args else None, eps=module.eps)
    if type(module).forward is not _BatchNorm.forward:
        norm.problem = f"{type(module).__name__}'s forward does more than batch normalisation (traced as one layer)"
    elif module.running_mean is None or module.running_var is None:
        norm.problem = "it tracks no running statistics"
    else:
        prefix = str(node.target)
        norm.targets = {key: f"{prefix}.{key}" if getattr(module, key) is not None else None
                        for key in ("running_mean", "running_var", "weight", "bias")}
    return norm


def _functional_norm(node: fx.Node) -> _Norm | None:
    if node.target is F.batch_norm:
        bound = _FUNCTIONAL.bind(*node.args, **node.kwargs)
        bound.apply_defaults()
        args = dict(bound.arguments)
    elif node.target is torch.batch_norm:
        args = dict(zip(_ATEN_ORDER, node.args, strict=False)) | dict(node.kwargs)
    else:
        return None
    norm = _Norm(node, node_module(node) or node.name, args["input"], eps=float(args.get("eps", 1e-5)))
    targets: dict[str, str | None] = {}
    for key in ("running_mean", "running_var", "weight", "bias"):
        value = args.get(key)
        if isinstance(value, fx.Node) and value.op == "get_attr":
            targets[key] = str(value.target)
        elif value is None and key in ("weight", "bias"):
            targets[key] = None
        else:
            norm.problem = f"its {key} is not a module's tensor"
            return norm
    if args.get("training") is not False:
        norm.problem = "it normalises with batch statistics (training=True in the traced call)"
    else:
        norm.targets = targets
    return norm


def _attr(gm: fx.GraphModule, target: str | None) -> torch.Tensor | None:
    return None if target is None else functools.reduce(getattr, target.split("."), gm)


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return all(u is user or reads_metadata(u) for u in node.users)


def _layer(gm: fx.GraphModule, node: fx.Node, user: fx.Node, calls: Counter[str]) -> str | None:
    """Why the output of ``node`` cannot take ``user``'s BatchNorm folded in, or None if it can (a conv or linear
    layer called once, whose output only ``user`` reads)."""
    if node.op != "call_module":
        what = "the graph input" if node.op == "placeholder" else f"'{node.name}'"
        return f"its input is no layer's output: {what}"
    layer = gm.get_submodule(str(node.target))
    if not isinstance(layer, (*_CONVS, nn.Linear)):
        return f"its input is no conv: {node.target} ({type(layer).__name__})"
    if calls[str(node.target)] > 1:
        return f"its input's conv is called more than once: {node.target} ({calls[str(node.target)]} times)"
    if not _only_user(node, user):
        return f"its input's conv has other users: {node.target}"
    return None


def _targets(gm: fx.GraphModule, norm: _Norm, calls: Counter[str]) -> tuple[list[fx.Node], str | None]:
    """The layers ``norm`` folds into (one, or the convs whose outputs a channel concatenation joins, as in
    MixNet's mixed kernels), or why it cannot be folded."""
    if norm.problem is not None:
        return [], norm.problem
    source = norm.source
    if not isinstance(source, fx.Node):
        return [], "its input is a constant"
    parts = source.args[0] if source.op == "call_function" and source.target is torch.cat else None
    dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim", 0)
    if isinstance(parts, list | tuple) and dim in (1, -3) and _only_user(source, norm.node):
        problems = [p for p in (_layer(gm, part, source, calls) if isinstance(part, fx.Node) else "a constant"
                                for part in parts) if p]
        if not problems:
            return list(parts), None
        return [], ("pre-activation BatchNorm, before its conv (its input concatenates more than conv outputs): "
                    f"{problems[0]}")
    reason = _layer(gm, source, norm.node, calls)
    return ([], reason) if reason else ([source], None)


def _fold(gm: fx.GraphModule, norm: _Norm, layers: list[fx.Node]) -> None:
    """Fold ``norm``'s statistics into ``layers`` (each its slice of the channels, in order) and route the
    norm's users to its input."""
    assert norm.source is not None and norm.targets is not None
    mean, var, weight, bias = (_attr(gm, norm.targets[k]) for k in ("running_mean", "running_var", "weight", "bias"))
    assert mean is not None and var is not None
    weight = torch.ones_like(mean) if weight is None else weight
    bias = torch.zeros_like(mean) if bias is None else bias
    start = 0
    for node in layers:
        layer = gm.get_submodule(str(node.target))
        part = slice(start, start + layer.weight.shape[0])
        start = part.stop
        fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
        layer.weight, layer.bias = fuse(layer.weight, layer.bias, mean[part], var[part], norm.eps, weight[part],
                                        bias[part])
    norm.node.replace_all_uses_with(norm.source)
    gm.graph.erase_node(norm.node)


def _drop_unread(gm: fx.GraphModule, targets: set[str]) -> None:
    """Unset the folded statistics and affine terms no node reads any more (a BatchNorm+activation module stays,
    as its activation still runs, but its BatchNorm tensors go)."""
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for target in targets - read:
        owner, _, name = target.rpartition(".")
        module = gm.get_submodule(owner)
        if isinstance(module, _BatchNorm):  # a BatchNorm module (its forward reads them): unset
            setattr(module, name, None)
        elif name in module._parameters or name in module._buffers:  # fx's holder of traced tensors: remove
            delattr(module, name)


def fold_bn(gm: fx.GraphModule, *, mode: str = "eval", inplace: bool = False) -> fx.GraphModule:
    """In eval mode, fold each BatchNorm (a module, or functional ``batch_norm`` on a module's statistics) into
    the conv or linear layer before it; skipped in training mode, where BatchNorm normalises with batch
    statistics. A BatchNorm after a channel concatenation of convs folds each slice into its conv. A BatchNorm is
    kept, with the reason in the report, when its input is no conv's output (a pre-activation BatchNorm before its
    conv), that conv's output has other users or the conv runs twice, or it keeps no running statistics."""
    check_mode(mode)
    gm, report = start(gm, "fold_bn", inplace)
    norms = [found for n in gm.graph.nodes
             if (found := _module_norm(gm, n) if n.op == "call_module" else
                 _functional_norm(n) if n.op == "call_function" else None) is not None]
    if mode == "train":
        report.skipped.append(f"{len(norms)} BatchNorm layers kept: training mode uses batch statistics")
        return finish(gm, report)
    gm.eval()
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")  # a conv run twice stays
    folded: set[str] = set()
    for norm in norms:
        layers, reason = _targets(gm, norm, calls)
        if reason is not None:
            report.skipped.append(f"kept {norm.name}: {reason}")
            continue
        assert norm.targets is not None
        _fold(gm, norm, layers)
        folded.update(t for t in norm.targets.values() if t is not None)
        report.changed.append(f"folded {norm.name} into {', '.join(str(n.target) for n in layers)}")
    eliminate_dead_code(gm.graph)
    _drop_unread(gm, folded)
    return finish(gm, report)
