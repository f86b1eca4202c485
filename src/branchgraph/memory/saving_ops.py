"""Exact, cheaper-to-keep versions of ops whose saved tensors are larger than their backward needs.

``masked_relu`` keeps a 1-byte mask instead of its float output (when nothing else keeps that output, e.g. a
branch's last ReLU before a concatenation, or a ReLU before a compact max pool); ``compact_max_pool2d`` keeps
each window's argmax as a 1- or 2-byte offset instead of aten's 8-byte flat index, and not its input (its
backward needs only the input's shape). Both give outputs and (for finite upstream gradients) gradients equal
to the plain ops'; both cost extra elementwise passes, which the planner weighs (measured in place,
``unit_timing``) against recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

RELUS = (F.relu, torch.relu)
MAX_POOLS = (F.max_pool2d, torch.max_pool2d)


class _MaskedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out > 0)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        # as fast as aten's threshold_backward, where torch.where on a bool mask takes 2.5x as long; a 0 * g
        # differs from aten's 0 only for an infinite or NaN upstream gradient (NaN), or in a zero's sign
        return mask.to(grad.dtype).mul_(grad)


def masked_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU that saves ``out > 0`` (bool) for backward: a quarter of a float32 output, a tenth of float64's."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaskedReLU.apply(x)
    return torch.relu(x)


def _pair(v: int | tuple[int, ...] | list[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


class _CompactMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool, dtype: torch.dtype) -> torch.Tensor:
        out, index = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)
        base = _window_bases(out, x.shape[-1], stride, padding)
        ctx.save_for_backward((index - base).to(dtype))  # (row in window) * width + column in window
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (offset,) = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.args
        index = offset.to(torch.int64).add_(_window_bases(grad, ctx.shape[-1], stride, padding))
        # aten's kernel reads only its input's shape and layout, so the gradient's own buffer stands in for the
        # input: no copy of it is kept, and in channels_last the kernel writes in place instead of through two
        # layout copies (3.3x faster at 128x64x48x48); int64 first then add_ is 2x a mixed-type add
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad_x = torch.empty(ctx.shape, dtype=ctx.dtype, device=grad.device, memory_format=layout)
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            grad, grad_x, kernel, stride, padding, dilation, ceil_mode, index, grad_input=grad_x)
        return grad_x, None, None, None, None, None, None


def _window_bases(out: torch.Tensor, width: int, stride: list[int], padding: list[int]) -> torch.Tensor:
    """Flat index (row * width + column) of each output position's window corner, as aten's indices count."""
    rows = torch.arange(out.shape[-2], device=out.device) * stride[0] - padding[0]
    cols = torch.arange(out.shape[-1], device=out.device) * stride[1] - padding[1]
    return rows[:, None] * width + cols[None, :]


def compact_max_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                       ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d`` whose backward keeps each argmax's offset in its window (uint8, or int16 for wide
    inputs) instead of an int64 index."""
    kernel = _pair(kernel_size)
    strides = _pair(stride) if stride not in (None, [], ()) else kernel
    pads, dils = _pair(padding), _pair(dilation)
    dtype = _offset_dtype(kernel, dils, x.shape[-1])
    if not (torch.is_grad_enabled() and x.requires_grad) or dtype is None:
        return F.max_pool2d(x, kernel, strides, pads, dils, ceil_mode)
    return _CompactMaxPool.apply(x, kernel, strides, pads, dils, ceil_mode, dtype)


def _offset_dtype(kernel: list[int], dilation: list[int], width: int) -> torch.dtype | None:
    """The smallest integer type that holds every argmax offset in a window (None: keep int64 indices)."""
    largest = (kernel[0] - 1) * dilation[0] * width + (kernel[1] - 1) * dilation[1]
    return torch.uint8 if largest < 2**8 else torch.int16 if largest < 2**15 else None


def offset_bytes(gm: fx.GraphModule, node: fx.Node, width: int) -> int:
    """Bytes per element ``compact_max_pool2d`` keeps for a max-pool node whose input is ``width`` wide."""
    found = _max_pool_args(gm, node)
    assert found is not None, node
    args, kwargs = found
    kernel = _pair(args[1] if len(args) > 1 else kwargs["kernel_size"])
    dilation = _pair(args[4] if len(args) > 4 else kwargs.get("dilation", 1))
    dtype = _offset_dtype(kernel, dilation, width)
    return 8 if dtype is None else torch.empty((), dtype=dtype).element_size()


def _max_pool_args(gm: fx.GraphModule, node: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """(args, kwargs) of ``compact_max_pool2d`` for a max-pool node, None if the node is no plain 2-d max pool."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if type(m) is not nn.MaxPool2d or m.return_indices:
            return None
        return (node.args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), {}
    if node.op == "call_function" and node.target in MAX_POOLS and not node.kwargs.get("return_indices"):
        return node.args, {k: v for k, v in node.kwargs.items() if k != "return_indices"}
    return None


def _relu_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """"inplace" or "relu" for a ReLU node (module or function), else None."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return None if type(m) is not nn.ReLU else "inplace" if m.inplace else "relu"
    if node.op == "call_function" and node.target in RELUS:
        return "inplace" if node.kwargs.get("inplace") else "relu"
    return None


def replacement(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """(target, args, kwargs) of the saving op that can stand in for ``node``, or None.

    A ReLU's stand-in only pays where nothing else keeps its output (the caller knows); an in-place ReLU is
    replaced only when its input has no other user, so nobody could see the input change or not."""
    kind = _relu_kind(gm, node)
    if kind is not None:
        source = node.args[0]
        if not isinstance(source, fx.Node) or (kind == "inplace" and len(source.users) > 1):
            return None
        return masked_relu, (source,), {}
    pool = _max_pool_args(gm, node)
    return None if pool is None else (compact_max_pool2d, *pool)


def pair(gm: fx.GraphModule, node: fx.Node) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...] | None:
    """(the node's op, its saving op) as functions of the node's first input, for timing; None if neither."""
    if _relu_kind(gm, node) is not None:
        return torch.relu, masked_relu
    pool = _max_pool_args(gm, node)
    if pool is None:
        return None
    rest, kwargs = pool[0][1:], pool[1]
    return (lambda t: F.max_pool2d(t, *rest, **kwargs)), (lambda t: compact_max_pool2d(t, *rest, **kwargs))


def kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """"relu" or "max_pool" for a node a saving op can replace, else None."""
    if replacement(gm, node) is None:
        return None
    return "relu" if _relu_kind(gm, node) is not None else "max_pool"


def replace(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Put the saving op in ``node``'s place (in ``gm``'s graph, same position); returns the new node."""
    found = replacement(gm, node)
    assert found is not None, node
    target, args, kwargs = found
    with gm.graph.inserting_after(node):
        new = gm.graph.call_function(target, args, kwargs)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new
