"""``parallel``: run the independent branches of each block at the same time (asynchronous computation of
independent operations).

The rewrite: each block's branches (the nodes only that branch computes, between the fork and the join) become one
``ParallelBranches`` module (``parallel_runtime``, which runs them on CUDA streams or a CPU thread pool).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator

from torch import fx

from branchgraph.graph.structure import Block, find_blocks
from branchgraph.passes.base import DROPOUTS, check_mode, finish, start
from branchgraph.passes.parallel_runtime import ParallelBranches

RANDOM_FUNCTIONS = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                    "rand", "randn", "rand_like", "randn_like", "randint", "bernoulli", "multinomial", "normal")

def _is_random(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), DROPOUTS)
    return node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) \
        in RANDOM_FUNCTIONS


def _regions(gm: fx.GraphModule, block: Block) -> tuple[list[list[fx.Node]], str | None]:
    """The nodes only each branch computes (nodes that several branches share run before, like fuse_parallel's
    fused conv), or the reason the block cannot be parallelised."""
    nodes = {n.name: n for n in gm.graph.nodes}
    if any(n not in nodes for b in block.branches for n in b.nodes):
        return [], "a block inside it already runs its branches concurrently (no nesting: one pool)"
    owners: dict[str, int] = {}
    for branch in block.branches:
        for name in branch.nodes:
            owners[name] = owners.get(name, 0) + 1
    regions = [[nodes[n] for n in b.nodes if owners[n] == 1] for b in block.branches]
    # a getitem of a value computed before (a fused conv's split) stays outside: the branches take tensors
    regions = [[n for n in r if not (n.target is operator.getitem and n.args[0] not in r)] for r in regions]
    regions = [r for r in regions if r]
    if len(regions) < 2:
        return regions, "fewer than two branches compute anything"
    for region in regions:
        inside = set(region)
        if any(_is_random(gm, n) for n in region):
            return regions, f"{region[0].name}: its branch draws random numbers (dropout), whose order threads " \
                            "would change"
        if sum(any(u not in inside for u in n.users) for n in region) != 1:
            return regions, f"the branch of {region[0].name} has more than one output"
        for n in region:
            if n.op == "call_module" and getattr(gm.get_submodule(str(n.target)), "inplace", False) \
                    and any(a not in inside for a in n.all_input_nodes):
                return regions, f"{n.name} overwrites a value the other branches read"
    return regions, None


def _extract(gm: fx.GraphModule, region: list[fx.Node], external: list[fx.Node]) -> tuple[fx.GraphModule, fx.Node]:
    """The region as its own GraphModule over ``external`` (its inputs from outside), and the region's output."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in external:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in region:
        env[node] = graph.node_copy(node, env.__getitem__)
    inside = set(region)
    exit_node = next(n for n in region if any(u not in inside for u in n.users))
    graph.output(env[exit_node])
    return fx.GraphModule(gm, graph, class_name="Branch"), exit_node


def _externals(region: list[fx.Node]) -> Iterator[fx.Node]:
    inside = set(region)
    seen: set[fx.Node] = set()
    for node in region:
        for arg in node.all_input_nodes:
            if arg not in inside and arg not in seen:
                seen.add(arg)
                yield arg


def parallel(gm: fx.GraphModule, *, mode: str = "train", workers: int | None = None,
             inplace: bool = False) -> fx.GraphModule:
    """Replace each block's independent branches by a ``ParallelBranches`` module (``workers`` CPU threads, by
    default one per branch). Blocks with random ops in a branch, a branch with several outputs or a branch that
    writes its input in place are skipped and named in the report."""
    check_mode(mode)
    gm, report = start(gm, "parallel", inplace)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for block in find_blocks(gm):
        regions, reason = _regions(gm, block)
        if reason:
            report.skipped.append(f"{block.name}: {reason}")
            continue
        own = [list(_externals(r)) for r in regions]
        externals = list(dict.fromkeys(n for nodes in own for n in nodes))
        pieces = [_extract(gm, r, nodes) for r, nodes in zip(regions, own, strict=True)]
        inputs = [[externals.index(n) for n in nodes] for nodes in own]
        inside = {n for r in regions for n in r}
        users = [u for _, exit_node in pieces for u in exit_node.users if u not in inside]
        first_user = min(users, key=order.__getitem__)
        if any(order[n] > order[first_user] for n in externals):
            report.skipped.append(f"{block.name}: a branch input is computed after a branch output is used")
            continue
        target = "parallel_" + re.sub(r"\W", "_", block.name)
        gm.add_submodule(target, ParallelBranches([g for g, _ in pieces], inputs, workers or len(regions)))
        with gm.graph.inserting_before(first_user):
            call = gm.graph.call_module(target, tuple(externals))
            outs = [gm.graph.call_function(operator.getitem, (call, i)) for i in range(len(pieces))]
        for (_, exit_node), out in zip(pieces, outs, strict=True):
            exit_node.replace_all_uses_with(out, delete_user_cb=lambda u, inside=inside: u not in inside)
        for region in reversed(regions):
            for node in reversed(region):
                gm.graph.erase_node(node)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        report.changed.append(f"{block.name}: {len(regions)} branches run concurrently")
    return finish(gm, report)


parallel.must_run_last = "the passes after it would not see inside its branches"  # type: ignore[attr-defined]
