"""``parallel``: run the independent branches of each block at the same time (seed 001's asynchronous computation).

Each block's branches (the nodes only that branch computes, between the fork and the join) become one
``ParallelBranches`` module. On CUDA its branches are issued on separate streams; autograd runs each backward op on
its forward op's stream, so the backward is concurrent too. On CPU they run on a thread pool (PyTorch ops release
the GIL); in training a custom autograd Function also runs the branches' backward passes on the pool, since
autograd's CPU engine would otherwise run them one after another on the calling thread.
"""

from __future__ import annotations

import operator
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import torch
from torch import fx, nn

from branchgraph.graph.structure import Block, find_blocks
from branchgraph.passes.base import check_mode, finish, start

T = TypeVar("T")
RANDOM_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
RANDOM_FUNCTIONS = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                    "rand", "randn", "rand_like", "randn_like", "randint", "bernoulli", "multinomial", "normal")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_STREAMS: dict[tuple[int, int], torch.cuda.Stream] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool per size, made on first use (modules stay picklable and deep-copyable)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="branchgraph-branch")
        return _POOLS[workers]


def _side_stream(device: torch.device, index: int) -> torch.cuda.Stream:
    key = (device.index if device.index is not None else torch.cuda.current_device(), index)
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(device)
    return _STREAMS[key]


def _with_caller_state(fn: Callable[[int], T]) -> Callable[[int], T]:
    """``fn`` run under the calling thread's grad mode and CPU autocast: both are thread-local in PyTorch."""
    grad = torch.is_grad_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")

    def run(index: int) -> T:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            if autocast:
                stack.enter_context(torch.autocast("cpu", dtype=dtype))
            return fn(index)
    return run


def run_concurrently(fn: Callable[[int], T], count: int, workers: int) -> list[T]:
    """``fn(0)`` .. ``fn(count - 1)``: the first on this thread, the others on the pool; errors re-raised here."""
    if workers <= 1 or count <= 1:
        return [fn(i) for i in range(count)]
    run = _with_caller_state(fn)
    futures: list[Future[T]] = [_pool(workers).submit(run, i) for i in range(1, count)]
    try:
        first = fn(0)
    finally:
        results = [f.result() for f in futures]  # waits for every branch even if this thread's one failed
    return [first, *results]


class _ThreadedBranches(torch.autograd.Function):
    """Forward and backward of the branches on the thread pool. Each branch gets its own detached copy of its
    inputs, so the concurrent backward passes never write the same leaf; their input gradients are then added."""

    @staticmethod
    def forward(ctx: Any, module: ParallelBranches, n_args: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = tensors[:n_args]
        leaves = [[args[j].detach().requires_grad_(args[j].requires_grad) for j in index]
                  for index in module.inputs]
        with torch.enable_grad():
            outs = run_concurrently(lambda i: module.branches[i](*leaves[i]), len(leaves), module.workers)
        ctx.module, ctx.n_args, ctx.leaves, ctx.outs = module, n_args, leaves, outs
        return tuple(out.detach() for out in outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        module: ParallelBranches = ctx.module
        params = module.branch_parameters()

        def branch_backward(i: int) -> tuple[torch.Tensor | None, ...]:
            wanted = [t for t in (*ctx.leaves[i], *params[i]) if t.requires_grad]
            if not wanted or not ctx.outs[i].requires_grad:
                return (None,) * len(wanted)
            return torch.autograd.grad(ctx.outs[i], wanted, grads[i], allow_unused=True)

        results = run_concurrently(branch_backward, len(ctx.outs), module.workers)
        arg_grads: list[torch.Tensor | None] = [None] * ctx.n_args
        param_grads: list[torch.Tensor | None] = []
        for index, leaves, branch_params, result in zip(module.inputs, ctx.leaves, params, results, strict=True):
            got = iter(result)
            for j, leaf in zip(index, leaves, strict=True):
                if leaf.requires_grad:
                    g = next(got)
                    if g is not None:
                        arg_grads[j] = g if arg_grads[j] is None else arg_grads[j] + g
            param_grads += [next(got) if p.requires_grad else None for p in branch_params]
        del ctx.leaves, ctx.outs  # the branches' graphs: freed now, as a plain backward would free them
        return (None, None, *arg_grads, *param_grads)


class ParallelBranches(nn.Module):
    """Independent branches of one block, each a GraphModule over some of ``forward``'s arguments, run
    concurrently (CUDA streams, else a thread pool of ``workers``); returns their outputs in order."""

    def __init__(self, branches: Sequence[fx.GraphModule], inputs: Sequence[Sequence[int]], workers: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.inputs = [list(index) for index in inputs]
        self.workers = workers

    def branch_parameters(self) -> list[list[nn.Parameter]]:
        return [list(branch.parameters()) for branch in self.branches]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():  # tracers record one thread: run in order
            return tuple(branch(*(args[j] for j in index)) for branch, index in zip(self.branches, self.inputs,
                                                                                  strict=True))
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        if device.type == "cuda":
            return self._streams(args, device)
        params = [p for branch in self.branch_parameters() for p in branch]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*args, *params)):
            return _ThreadedBranches.apply(self, len(args), *args, *params)
        return tuple(run_concurrently(lambda i: self.branches[i](*(args[j] for j in self.inputs[i])),
                                      len(self.branches), self.workers))

    def _streams(self, args: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Branch 0 on the current stream, the others each on a side stream that first waits for the current one.
        ``record_stream`` keeps the caching allocator from reusing a tensor while another stream may still read it."""
        current = torch.cuda.current_stream(device)
        outs = []
        for i, (branch, index) in enumerate(zip(self.branches, self.inputs, strict=True)):
            inputs = [args[j] for j in index]
            if i == 0:
                outs.append(branch(*inputs))
                continue
            stream = _side_stream(device, i)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                for tensor in inputs:
                    tensor.record_stream(stream)
                outs.append(branch(*inputs))
        for i, out in enumerate(outs[1:], start=1):
            current.wait_stream(_side_stream(device, i))
            out.record_stream(current)
        return tuple(outs)


def unwrap_name(name: str) -> str:
    """A parameter's name in the model before this pass: ``parallel_<block>.branches.<i>.`` dropped."""
    return re.sub(r"(^|\.)parallel_[A-Za-z0-9_]+\.branches\.\d+\.", r"\1", name)


def _is_random(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), RANDOM_MODULES)
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

