"""Branch structure of a captured graph: forks (values used by several nodes), joins (cat, add, and the products of
gates such as squeeze-and-excitation's), branches."""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx

from branchgraph.graph.tracing import node_module

aten = torch.ops.aten
# torch functions as fx's symbolic tracer records them, and aten ops as torch.export does
JOIN_TARGETS = (torch.cat, torch.add, operator.add, operator.iadd, torch.stack, aten.cat.default, aten.add.Tensor,
                aten.add_.Tensor, aten.stack.default)
GATE_TARGETS = (torch.mul, operator.mul, operator.imul, aten.mul.Tensor, aten.mul_.Tensor)  # a join where a branch
# of modules scales another path
JOIN_METHODS = ("add", "add_")
GATE_METHODS = ("mul", "mul_")


@dataclass
class Branch:
    """One path between a fork and a join: its nodes and the modules they call."""

    name: str
    nodes: list[str]
    modules: list[str] = field(default_factory=list)


@dataclass
class Block:
    """A fork whose value flows through parallel branches into one join (an Inception block, a residual)."""

    name: str
    fork: str
    join: str
    branches: list[Branch]


METADATA_ATTRS = ("shape", "ndim", "dtype", "device", "is_cuda")
METADATA_METHODS = ("size", "dim", "numel")


def reads_metadata(node: fx.Node) -> bool:
    """Whether ``node`` reads only its input's shape, rank, type or device (``x.shape``, ``x.size()``)."""
    if node.op == "call_method":
        return node.target in METADATA_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in METADATA_ATTRS


def shape_only(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that only read or check tensors' metadata (timm's ``_assert(x.ndim == 4)``, ``B, C, H, W = x.shape``):
    the reads themselves, and what computes on their results alone without making a tensor. They are no
    structure: no fork, and not drawn."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        computes = node.op in ("call_function", "call_method") and bool(node.all_input_nodes) and not hasattr(
            node.meta.get("tensor_meta"), "shape") and all(arg in found for arg in node.all_input_nodes)
        if reads_metadata(node) or computes:
            found.add(node)
    return found


def structural_users(node: fx.Node, hidden: set[fx.Node]) -> list[fx.Node]:
    """The users of ``node`` other than the ``hidden`` (shape-only) ones."""
    return [user for user in node.users if user not in hidden]


def forks(graph: fx.Graph) -> list[fx.Node]:
    """Nodes whose value is used by more than one node."""
    return [n for n in graph.nodes if len(n.users) > 1 and n.op != "output"]


def _is_gate(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in GATE_TARGETS) or (
        node.op == "call_method" and node.target in GATE_METHODS)


def _join_inputs(node: fx.Node) -> list[fx.Node]:
    if node.op == "call_method" and node.target in (*JOIN_METHODS, *GATE_METHODS):
        inputs = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        return inputs if len(inputs) == 2 else []
    if node.op != "call_function" or node.target not in (*JOIN_TARGETS, *GATE_TARGETS):
        return []
    first = node.args[0] if node.args else None
    candidates = list(first) if isinstance(first, list | tuple) else list(node.args[:2])
    inputs = [a for a in candidates if isinstance(a, fx.Node)]
    return inputs if len(inputs) >= 2 else []


def joins(graph: fx.Graph) -> list[fx.Node]:
    """cat/stack/add/mul nodes that combine two or more computed values."""
    return [n for n in graph.nodes if _join_inputs(n)]


def _ancestors(node: fx.Node, memo: dict[fx.Node, frozenset[fx.Node]]) -> frozenset[fx.Node]:
    """``node`` and everything it depends on (iterative, memoised)."""
    stack = [node]
    while stack:
        current = stack[-1]
        if current in memo:
            stack.pop()
            continue
        missing = [a for a in current.all_input_nodes if a not in memo]
        if missing:
            stack.extend(missing)
            continue
        result = {current}
        for a in current.all_input_nodes:
            result |= memo[a]
        memo[current] = frozenset(result)
        stack.pop()
    return memo[node]


def common_prefix(paths: list[str]) -> str:
    """The longest dotted module path all ``paths`` start with ('' when none)."""
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    prefix: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return ".".join(prefix)


def _modules(nodes: list[fx.Node]) -> list[str]:
    """The modules a branch calls: its call_module nodes' targets and, in torch.export's aten graphs, the module
    each aten op was called in (once each)."""
    found: list[str] = []
    for n in nodes:
        if n.op == "call_module":
            found.append(str(n.target))
        elif isinstance(n.target, torch._ops.OpOverload) and (path := node_module(n)) and path not in found:
            found.append(path)
    return found


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """Every join with the fork its inputs share and the nodes of each branch between the two. A product counts
    as a join where a branch calls a module (a squeeze-and-excitation gate), not where it is elementwise
    arithmetic (``x * sigmoid(x)``)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    memo: dict[fx.Node, frozenset[fx.Node]] = {}
    blocks: list[Block] = []
    for join in joins(gm.graph):
        inputs = _join_inputs(join)
        sets = [_ancestors(i, memo) for i in inputs]
        common = frozenset.intersection(*sets)
        if not common:
            continue
        fork = max(common, key=order.__getitem__)
        raw = [{n for n in s if order[n] > order[fork]} for s in sets]
        shared = set.intersection(*raw) if len(raw) > 1 else set()
        branch_nodes = [sorted(r - shared, key=order.__getitem__) for r in raw]
        module_lists = [_modules(nodes) for nodes in branch_nodes]
        if _is_gate(join) and not any(module_lists):
            continue
        # The block is the module whose forward makes the join (an Inception block), else the join node.
        block_path = node_module(join)
        block_name = block_path or join.name
        branches = []
        for index, (nodes, modules) in enumerate(zip(branch_nodes, module_lists, strict=True)):
            prefix = common_prefix([node_module(n) for n in nodes])
            if block_path and prefix.startswith(block_path + "."):
                below = prefix[len(block_path) + 1:].split(".")[0]
            else:
                below = "" if block_path else prefix.split(".")[0]
            if not nodes:
                name = f"{block_name}.identity"
            elif below:
                name = f"{block_path}.{below}" if block_path else below
            else:
                name = f"{block_name}.path{index + 1}"
            branches.append(Branch(name, [n.name for n in nodes], modules))
        blocks.append(Block(block_name, fork.name, join.name, branches))
    counts = Counter(b.name for b in blocks)  # a module with several joins (nested forks): one block per join
    for b in blocks:
        if counts[b.name] > 1:
            b.name = f"{b.name} ({b.join})"
    return blocks
