"""A checkpoint plan checked before it is returned: one training step of the planned model against the plain one.

The check runs in float64 on a slice of the example batch: the recomputation runs the same operators on the same
values, so an exact plan's parameter gradients equal the plain model's up to the order of a few sums. A planned
step that raises (an in-place op changed what a region recomputes from, say) becomes one line naming the plan.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from branchgraph.errors import ConfigError, raise_if_out_of_memory

VERIFY = 2  # samples of the example batch every exact plan's float64 gradient check runs on (BatchNorm needs 2)
EXACT = 1e-9  # an exact plan's parameter gradients may differ from plain's by this much, relative


def grad_error(plain: nn.Module, planned: nn.Module, example: torch.Tensor) -> float:
    """The relative change ||g_planned - g|| / ||g|| of all parameter gradients together, in float64, of one
    training step of ``planned`` (a checkpointed copy of ``plain``) against ``plain`` on ``example`` (both run
    on copies, same RNG state). The loss is a fixed random projection of the outputs: their plain sum
    has zero gradient through BatchNorm, which would leave only rounding to compare."""
    grads = []
    devices = [example.device] if example.device.type == "cuda" else []
    for net in (plain, planned):
        model = copy.deepcopy(net).double().train()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            outs = model(example.double())
            outs = outs if isinstance(outs, tuple) else (outs,)
            generator = torch.Generator().manual_seed(1)
            sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)).sum()
                for t in outs).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    exact, found = grads
    scale = float(exact.norm())
    return float((found - exact).norm()) / scale if scale else float((found - exact).norm())


@contextlib.contextmanager
def step_failure(model: nn.Module, regions: list[str] | None) -> Iterator[None]:
    """A planned training step (its plan's ``regions`` named; None: the plain model) that raises becomes a
    one-line ConfigError naming them (a plan that cannot run is never returned); the plain model's own failures
    pass through."""
    try:
        yield
    except (RuntimeError, TypeError, ValueError) as exc:
        raise_if_out_of_memory(exc, f" in a training step of {type(model).__name__}")
        if regions is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        names = ", ".join(regions) or "none"
        raise ConfigError(f"the checkpoint plan for {type(model).__name__} fails in training ({first}); regions: "
                          f"{names}; try another budget", "budget") from None


def verify_plan(model: nn.Module, planned: nn.Module, example: torch.Tensor, regions: list[str]) -> float:
    """Check an exact plan (its ``regions`` named) before it is returned: one float64 training step of
    ``planned`` on the first VERIFY samples gives ``model``'s parameter gradients within EXACT, relative. Returns
    the relative change; raises ConfigError where the step fails or differs."""
    with step_failure(model, regions):
        change = grad_error(model, planned, example[:VERIFY] if len(example) > VERIFY else example)
    if not change <= EXACT:
        raise ConfigError(f"the checkpoint plan for {type(model).__name__} changes its parameter gradients by "
                          f"{change:.2e} relative (float64; an exact plan may change them by {EXACT:g}); try "
                          "another budget", "budget")
    return change
