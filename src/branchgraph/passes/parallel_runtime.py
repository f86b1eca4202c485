"""How ``ParallelBranches`` runs a block's branches at once. On CUDA its branches are issued on separate streams;
autograd runs each backward op on its forward op's stream, so the backward is concurrent too. On CPU they run on a
thread pool (PyTorch ops release the GIL); in training a custom autograd Function also runs the branches' backward
passes on the pool, since autograd's CPU engine would otherwise run them one after another on the calling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import torch
from torch import fx, nn

T = TypeVar("T")
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

    def original_name(self, key: str) -> str:
        """A name under this module (``branches.<i>.<path>``) as it was before the parallel pass: each branch
        keeps its modules' paths in the model it came from."""
        return key.split(".", 2)[2]

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
