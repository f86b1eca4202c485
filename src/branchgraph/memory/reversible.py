"""Reversible couplings (RevNet, Gomez et al. 2017) and a sequence that keeps only its final output for backward.

``AdditiveCoupling`` computes y1 = x1 + F(x2), y2 = x2 + G(y1) on the two channel halves and can invert
itself. ``ReversibleSequence`` runs its couplings without building an autograd graph and, in backward,
reconstructs each block's input from its output while back-propagating through it (RevNet's Algorithm 1: F and
G run once more each, not twice): the activations kept for backward are one output tensor, whatever the depth.
BatchNorm running statistics are frozen during the recomputation, so they are updated once per step, not twice.
F and G may not contain dropout: the inverse runs them in another order, so their masks could not be replayed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
from torch import nn

from branchgraph.memory.lossy import exact_saves


class AdditiveCoupling(nn.Module):
    """y1 = x1 + F(x2); y2 = x2 + G(y1) over the two halves of the channels; ``inverse`` undoes it."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for net in (f, g) for m in net.modules()):
            raise ValueError("a reversible coupling's F and G cannot contain dropout: its masks cannot be replayed")
        self.f, self.g = f, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat((y1, y2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat((x1, x2), dim=1)


@contextlib.contextmanager
def statistics_frozen(modules: list[nn.Module]) -> Iterator[None]:
    """For a recomputation: BatchNorm momentum 0 (running statistics unchanged, bit for bit) and batch counters
    restored, so that the statistics are updated once per step, by the original forward."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    state = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in state:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _backward_through(net: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute ``net(x)`` with grad (statistics frozen) and back-propagate ``grad`` through it (its parameters'
    gradients accumulate); returns (output, gradient wrt x)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), statistics_frozen([net]):
        out = net(x)
    torch.autograd.backward(out, grad)
    return out.detach(), x.grad


def reverse_step(block: AdditiveCoupling, y: torch.Tensor, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RevNet's Algorithm 1: rebuild a coupling's input from its output while back-propagating through it,
    running F and G once each. Returns (input, gradient wrt input)."""
    y1, y2 = y.chunk(2, dim=1)
    dy1, dy2 = grad_y.chunk(2, dim=1)
    g, dg = _backward_through(block.g, y1, dy2)
    dz1 = dy1 + dg  # y1 reaches the loss directly and through y2 = x2 + G(y1)
    x2 = y2 - g
    f, df = _backward_through(block.f, x2, dz1)
    x1 = y1 - f
    return torch.cat((x1, x2), dim=1), torch.cat((dz1, dy2 + df), dim=1)


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, blocks: nn.ModuleList, *params: torch.Tensor) -> torch.Tensor:
        ctx.blocks = blocks
        device = x.device.type
        # backward runs outside the caller's autocast: replay the forward's, or dtypes would not match
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        with torch.no_grad():
            for block in blocks:
                x = block(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (y,) = ctx.saved_tensors
        y = y.detach()
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            for block in reversed(ctx.blocks):
                y, grad_y = reverse_step(block, y, grad_y)
        return (grad_y, None, *([None] * len(ctx.needs_input_grad[2:])))


class ReversibleSequence(nn.Module):
    """Couplings applied in order; backward reconstructs activations instead of storing them.

    Parameter gradients are accumulated directly during the reconstruction (they do not flow through this
    module's outputs), as in RevNet and memcnn's implementations.
    """

    own_autograd = True  # the memory planner's tracer keeps it one node: it recomputes instead of saving

    def __init__(self, blocks: list[AdditiveCoupling], reversible: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.reversible = reversible  # False: plain autograd through the same blocks (the stored-activation twin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fx traces (and graph passes see) the plain computation: a Proxy has no autograd to save memory for.
        if isinstance(x, torch.fx.Proxy) or not self.reversible or not torch.is_grad_enabled() or not (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            for block in self.blocks:
                x = block(x)
            return x
        with exact_saves():  # the reconstruction inverts the blocks from this output: narrowed, it would drift
            return _ReversibleFunction.apply(x, self.blocks, *self.parameters())

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y
