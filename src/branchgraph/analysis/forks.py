"""How the parallel branches of each block share the gradient at their fork.

Autograd adds the gradients flowing back from every use of a value. ``fork_gradients`` makes each use visible:
in a copy of the captured graph, every use of a block's fork value gets its own identity view whose gradient is
recorded, and the fork's total gradient is taken in a separate run of the untouched graph. The sum of the
branches' contributions must equal that total (the identity is checked, not assumed). Each branch's share is
<g_i, g> / |g|^2, so the shares add up to 1; the imbalance is the largest branch norm over the smallest.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from branchgraph.errors import BranchgraphError
from branchgraph.graph.structure import Block, find_blocks
from branchgraph.graph.tracing import capture

ZERO_GRADIENT = ("no gradient reached this fork: a zero-initialised layer after it (a residual branch's last "
                 "BatchNorm with zero weight, say) stops it until training moves that layer")


class _Tap(nn.Module):
    """An identity whose gradient is recorded in ``store[key]``: one use of a value, made visible to autograd."""

    def __init__(self, store: dict[str, torch.Tensor], key: str) -> None:
        super().__init__()
        self.store, self.key = store, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.view_as(x)
        if y.requires_grad:
            y.register_hook(lambda g: self.store.__setitem__(self.key, g.detach().clone()))
        return y


@dataclass
class BranchGradient:
    """One use of a fork value: its gradient's norm and its share of the fork's gradient."""

    name: str
    grad_norm: float
    share: float


@dataclass
class ForkGradients:
    """A block's fork: its total gradient, the branches' contributions and how well they add up."""

    block: str
    fork: str
    grad_norm: float
    sum_error: float  # |sum of contributions - total| / |total|
    imbalance: float  # largest branch gradient norm / smallest nonzero one
    branches: list[BranchGradient]
    note: str = ""  # why the shares say nothing, when no gradient reached the fork

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """The fork's gradient norm and imbalance, then each branch's norm and share."""
        if self.note:
            return f"  {self.block:<28} fork {self.fork:<16} |g| 0: {self.note}"
        lines = [f"  {self.block:<28} fork {self.fork:<16} |g| {self.grad_norm:.3e}  imbalance {self.imbalance:6.2f}"]
        lines += [f"      {b.name:<34} |g_i| {b.grad_norm:.3e}  share {b.share:6.1%}"
                  + ("  (no gradient: a zero-initialised layer on this branch?)" if b.grad_norm == 0 else "")
                  for b in self.branches]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def imbalance(norms: list[float]) -> float:
    """The largest branch gradient norm over the smallest nonzero one (1 when no branch gets a gradient)."""
    nonzero = [n for n in norms if n > 0]
    return max(nonzero) / min(nonzero) if nonzero else 1.0


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _fork_tensor(nodes: dict[str, fx.Node], block: Block) -> tuple[fx.Node, fx.Node | None] | None:
    """(the tensor whose gradient the block's branches share, the split/chunk between it and them or None); None
    where the fork is a tuple that comes from no tensor's split. A channel split's branches read slices of one
    tensor: their contributions to its gradient are zero outside their slice, and still add up to it."""
    fork = nodes[block.fork]
    if _is_tensor(fork):
        return fork, None
    source = fork.args[0] if fork.args else None
    if fork.op in ("call_function", "call_method") and isinstance(source, fx.Node) and _is_tensor(source) and (
            _pieces(fork) is not None):
        return source, fork
    return None


def _pieces(node: fx.Node) -> list[fx.Node] | None:
    """The used getitem nodes of a node that splits a tensor into a tuple (split, chunk, unbind), else None."""
    if _is_tensor(node) or not node.users or not all(
            u.op == "call_function" and u.target is operator.getitem for u in node.users):
        return None
    return [u for u in node.users if u.users]


def _uses(block: Block, tensor: fx.Node, split: fx.Node | None) -> list[tuple[fx.Node, str]]:
    """(user node, branch name) for every use of the block's fork ``tensor``; uses outside the block are 'other'.
    Each piece of a split of the tensor is a use of its own (its getitem node); where the block's branches start
    at the block's ``split``, they are named by the piece's index."""
    owner = {name: b.name for b in block.branches for name in b.nodes}
    identity = next((b.name for b in block.branches if not b.nodes), None)

    def name(user: fx.Node) -> str:
        if user.name in owner:
            return owner[user.name]
        return identity if user.name == block.join and identity is not None else f"{block.name}.other"

    uses = []
    for user in tensor.users:
        pieces = _pieces(user)
        if pieces is None:
            uses.append((user, name(user)))
        else:
            uses += [(p, f"{block.name}.{user.name}[{p.args[1]}]" if user is split else name(p)) for p in pieces]
    return uses


def _tapped(gm: fx.GraphModule, taps: dict[str, list[tuple[fx.Node, str]]], per_use: bool,
            store: dict[str, torch.Tensor]) -> fx.GraphModule:
    """A copy of ``gm`` with a recording identity (into ``store``) on each fork (per_use=False) or on each of its
    uses."""
    new = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    nodes = {n.name: n for n in new.graph.nodes}

    made: list[str] = []

    def tap_node(fork: fx.Node, key: str) -> fx.Node:
        name = f"branchgraph_tap_{len(made)}"
        made.append(name)
        new.add_submodule(name, _Tap(store, key))
        return new.graph.call_module(name, (fork,))

    for fork_name, uses in taps.items():
        fork = nodes[fork_name]
        if not per_use:
            with new.graph.inserting_after(fork):
                tap = tap_node(fork, f"{fork_name}/total")
            fork.replace_all_uses_with(tap, delete_user_cb=lambda user, t=tap: user is not t)
            continue
        for index, (user, _) in enumerate(uses):
            target = nodes[user.name]
            with new.graph.inserting_before(target):
                tap = tap_node(fork, f"{fork_name}/{index}")
                source = target.args[0] if target.target is operator.getitem else None
                if isinstance(source, fx.Node) and source.args and source.args[0] is fork:  # a piece of a split:
                    # this piece comes from a split of its own tapped copy
                    piece = new.graph.node_copy(source, lambda a, f=fork, t=tap: t if a is f else a)
                    target.replace_input_with(source, piece)
                    continue
            target.replace_input_with(fork, tap)
    new.graph.lint()
    new.recompile()
    return new


def _loss(output: Any, weights: torch.Tensor | None, target: torch.Tensor | None) -> torch.Tensor:
    logits = output.logits if hasattr(output, "logits") else output
    if target is not None and logits.dim() == 2:
        return F.cross_entropy(logits, target)
    assert weights is not None
    return (logits * weights).sum()


def fork_gradients(model: nn.Module, example: torch.Tensor, seed: int = 0) -> list[ForkGradients]:
    """Per block of ``model`` (captured on ``example``): the fork's gradient in a training step and each branch's
    contribution to it. The loss is cross-entropy against random labels (a random projection for models without
    a classifier); the model itself is not touched."""
    cap = capture(model, example)
    if cap.graph_module is None:
        raise BranchgraphError(f"{type(model).__name__}: {cap.note}")
    gm = cap.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    order = {name: i for i, name in enumerate(nodes)}
    # forks that hold one tensor, or a split of one (its pieces are the uses); where several joins share a split
    # (its pieces added and concatenated, as in Res2Net), the last join's block stands for them
    chosen: dict[int | str, tuple[Block, fx.Node, fx.Node | None]] = {}  # block index, or the split's name
    for index, block in enumerate(find_blocks(gm)):
        found = _fork_tensor(nodes, block)
        if found is None:
            continue
        key = index if found[1] is None else found[1].name
        if key not in chosen or order[block.join] > order[chosen[key][0].join]:
            chosen[key] = (block, *found)
    blocks = [(block, tensor.name, _uses(block, tensor, split)) for block, tensor, split in chosen.values()]
    taps = {fork: uses for _, fork, uses in blocks}  # the users of a fork; several blocks may share one
    generator = torch.Generator().manual_seed(seed)
    meta = next(n for n in gm.graph.nodes if n.op == "output").meta["tensor_meta"]  # the capture's eval run
    shape = (meta if hasattr(meta, "shape") else meta[0]).shape  # torch.export's outputs come as a tuple
    target = torch.randint(0, shape[1], (shape[0],), generator=generator) if len(shape) == 2 else None
    weights = torch.randn(shape, generator=generator) if target is None else None
    recorded = []
    for per_use in (False, True):
        store: dict[str, torch.Tensor] = {}
        net = _tapped(gm, taps, per_use, store).train()
        torch.manual_seed(seed)  # the same dropout masks in both runs
        _loss(net(example), weights, target).backward()
        recorded.append(store)
    totals, contributions = recorded
    reports = []
    for block, fork, uses in blocks:
        total = totals.get(f"{fork}/total")
        if total is None:
            continue  # no gradient reaches this fork (nothing before it requires grad)
        parts = [(name, contributions.get(f"{fork}/{i}", torch.zeros_like(total))) for i, (_, name) in enumerate(uses)]
        norm = float(total.norm())
        summed = torch.stack([g for _, g in parts]).sum(0)
        denom = float(total.pow(2).sum()) or 1.0
        branches = [BranchGradient(name, float(g.norm()), float((g * total).sum()) / denom) for name, g in parts]
        reports.append(ForkGradients(
            block.name, fork, norm, float((summed - total).norm()) / (norm or 1.0),
            imbalance([b.grad_norm for b in branches]), branches, "" if norm > 0 else ZERO_GRADIENT,
        ))
    return reports
