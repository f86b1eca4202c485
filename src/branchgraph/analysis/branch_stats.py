"""Per-branch gradient statistics during training: what each Inception branch receives and returns.

``BranchStats(model).recording()`` arms hooks for one training step and removes them afterwards, so a step that
is not recorded runs the untouched model: the statistics cost nothing when off. While armed, every branch reads
its own identity view of the block's input (a forward pre-hook), so autograd hands each branch's contribution to
the fork's input gradient to a hook before adding them up; a forward hook sees the gradient of each branch's
output. After backward, ``collect`` adds the norm of each branch's parameter gradients and the gates.

Per branch: ``param_grad`` (norm of its parameters' gradients), ``output_grad`` (norm of the gradient at its
output, before the block's per-branch norm and gate), ``input_grad`` (norm of its contribution to the fork's
gradient) and ``share`` (<g_i, g> / |g|^2 of that contribution g_i against the fork's gradient g; the shares add
up to 1). Per block: ``imbalance``, the largest ``input_grad`` over the smallest nonzero one, as in
``fork_gradients``. Norms are divided by the loss scale, so fp16 runs report true gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from branchgraph.analysis.forks import imbalance
from branchgraph.errors import ConfigError
from branchgraph.models.inception import Inception

BRANCH_FIELDS = ("param_grad", "output_grad", "input_grad", "share")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Detached, in at least float32: half-precision gradients are reduced without overflow, float64 stays exact."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The norm of all of ``tensors`` together, with one fused kernel per dtype (as clip_grad_norm_ does)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([_wide(n) for n in torch._foreach_norm(tensors)]))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in its memory order (channels_last included), a copy only when not dense."""
    dense = t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    return t.as_strided((t.numel(),), (1,)) if dense else t.reshape(-1)


def _gram(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The matrix of dot products <t_i, t_j> on flat views (no copy; vecdot is a parallel reduction, unlike dot)."""
    if len({t.stride() for t in tensors}) > 1:
        tensors = [t.contiguous() for t in tensors]
    flat = [_flat(t) for t in tensors]
    n = len(flat)
    gram = torch.empty(n, n, dtype=flat[0].dtype, device=flat[0].device)
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = torch.linalg.vecdot(flat[i], flat[j])
    return gram


class BranchStats:
    """Records per-branch gradient statistics of every Inception block of ``model`` on the steps it is armed for."""

    def __init__(self, model: nn.Module) -> None:
        self.blocks: list[tuple[str, Inception]] = [
            (name, module) for name, module in model.named_modules() if isinstance(module, Inception)
        ]
        if not self.blocks:
            raise ConfigError(f"model {type(model).__name__} has no Inception blocks; branch statistics need one")
        self._counts = {name: len(block.branches()) for name, block in self.blocks}
        self._inputs: dict[str, dict[int, torch.Tensor]] = {}
        self._outputs: dict[tuple[str, int], torch.Tensor] = {}
        self._fork: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Hooks on every branch for the forward and backward run inside this context; none outside it."""
        handles: list[RemovableHandle] = []
        self._inputs.clear()
        self._outputs.clear()
        self._fork.clear()
        for name, block in self.blocks:
            for index, (_, branch) in enumerate(block.branches()):
                handles.append(branch.register_forward_pre_hook(partial(self._tap_input, name, index)))
                handles.append(branch.register_forward_hook(partial(self._tap_output, name, index)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _tap_input(self, block: str, index: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if not (isinstance(x, torch.Tensor) and x.requires_grad):
            return None  # a no-grad forward (a reversible block's first pass): no gradient will come this way
        view = x.view_as(x)
        view.register_hook(partial(self._input_grad, block, index))
        return (view, *args[1:])

    def _tap_output(self, block: str, index: int, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(partial(self._output_grad, block, index))

    def _output_grad(self, block: str, index: int, grad: torch.Tensor) -> None:
        self._outputs[block, index] = _gram([_wide(grad)])[0, 0].sqrt()

    def _input_grad(self, block: str, index: int, grad: torch.Tensor) -> None:
        """Keep the branches' contributions until all have arrived, then reduce them to norms and shares."""
        parts = self._inputs.setdefault(block, {})
        parts[index] = _wide(grad)
        count = self._counts[block]
        if len(parts) < count:
            return
        gram = _gram([parts[i] for i in range(count)])  # <g_i, g_j>: one pass over the gradients
        energy = gram.sum()  # |sum of g_i|^2
        shares = gram.sum(1) / torch.where(energy > 0, energy, torch.ones_like(energy))
        self._fork[block] = (gram.diagonal().clamp_min(0).sqrt(), shares)
        del self._inputs[block]

    def collect(self, loss_scale: float = 1.0) -> dict[str, Any]:
        """The statistics of the step just recorded (call after backward, before the optimiser zeroes gradients)."""
        reduced: list[torch.Tensor] = []
        for name, block in self.blocks:
            branches = block.branches()
            params = [_norm([p.grad for p in branch.parameters() if p.grad is not None]) for _, branch in branches]
            outputs = [self._outputs.get((name, i), torch.zeros(())) for i in range(len(branches))]
            inputs, shares = self._fork.get(name, (torch.zeros(len(branches)), torch.zeros(len(branches))))
            reduced.append(torch.stack([torch.stack(params).cpu() / loss_scale, torch.stack(outputs).cpu() / loss_scale,
                                        inputs.cpu() / loss_scale, shares.cpu()], dim=1))
        values = [t.tolist() for t in reduced]  # one device sync for the whole step
        blocks: dict[str, Any] = {}
        for (name, block), rows in zip(self.blocks, values, strict=True):
            record: dict[str, Any] = {
                "imbalance": imbalance([row[2] for row in rows]),
                "branches": {branch: dict(zip(BRANCH_FIELDS, row, strict=True))
                             for (branch, _), row in zip(block.branches(), rows, strict=True)},
            }
            if block.gate_logits is not None:
                record["gates"] = block.gate_values().tolist()
            blocks[name] = record
        return blocks


def epoch_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean imbalance over an epoch's recorded steps: averaged over blocks, and of the worst block."""
    if not records:
        return {}
    names = list(records[0]["blocks"])
    per_block = [sum(r["blocks"][n]["imbalance"] for r in records) / len(records) for n in names]
    return {"branch_imbalance": sum(per_block) / len(per_block), "branch_imbalance_max": max(per_block)}
