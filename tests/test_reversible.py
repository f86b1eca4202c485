"""Reversible couplings: exact inverse, gradients of the plain computation, BatchNorm updated once,
activation memory constant in depth."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from branchgraph.memory import AdditiveCoupling, ReversibleSequence


def _half(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())


def _blocks(depth: int, channels: int = 4) -> list[AdditiveCoupling]:
    return [AdditiveCoupling(_half(channels), _half(channels)) for _ in range(depth)]


def test_inverse_undoes_forward() -> None:
    torch.manual_seed(0)
    seq = ReversibleSequence(_blocks(3)).double().eval()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(seq.inverse(seq(x)), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_and_batchnorm_match_the_plain_computation(seed: int) -> None:
    torch.manual_seed(seed)
    blocks = _blocks(4)
    plain = nn.Sequential(*copy.deepcopy(blocks)).double().train()
    rev = ReversibleSequence(copy.deepcopy(blocks)).double().train()
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    weights = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    results = []
    for net in (plain, rev):
        inp = x.clone().requires_grad_(True)
        out = net(inp)
        (out * weights).sum().backward()
        results.append((out.detach(), inp.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-8, atol=1e-10)
    for (name, p_plain), p_rev in zip(plain.named_parameters(), rev.parameters(), strict=True):
        torch.testing.assert_close(p_rev.grad, p_plain.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, b_plain), b_rev in zip(plain.named_buffers(), rev.buffers(), strict=True):
        torch.testing.assert_close(b_rev, b_plain, rtol=0, atol=1e-12, msg=f"{name} updated other than once")


def _saved_bytes(depth: int) -> int:
    torch.manual_seed(0)
    seq = ReversibleSequence(_blocks(depth, channels=8)).train()
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in seq.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = seq(torch.randn(4, 16, 16, 16, requires_grad=True))
    kept = sum(storages.values())  # what the forward keeps for backward; the recomputation's saves are transient
    out.sum().backward()
    return kept


def test_activation_memory_is_constant_in_depth() -> None:
    assert _saved_bytes(2) == _saved_bytes(8) == 4 * 16 * 16 * 16 * 4  # one output tensor


def test_dropout_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot contain dropout"):
        AdditiveCoupling(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Dropout(0.1)), nn.Identity())
