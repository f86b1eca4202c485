"""``BranchMonitor`` in a plain PyTorch loop: shares against autograd's own per-branch gradients, every fork of an
Inception net, identity skips as the remainder, models fx cannot trace, and no effect on the gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import branchgraph as bg
from branchgraph.errors import ConfigError
from tests.nets import TwoBranchNet, ZeroInitResidual


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss


def test_shares_are_each_branch_s_part_of_the_fork_gradient() -> None:
    """The fork is the input: |g| is x.grad's norm, and each share is <g_i, g>/|g|^2 with g_i the gradient through
    that branch alone (the other branch reads a detached copy)."""
    torch.manual_seed(0)
    net = TwoBranchNet(3, 4).double()
    monitor = bg.BranchMonitor(net, (3, 8, 8))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    _step(net, x, y)
    monitor.update()
    g = x.grad
    monitor.close()  # the reference below runs the branches alone
    through = {}
    for name in ("a", "b"):
        xi = x.detach().requires_grad_(True)
        other = x.detach()
        a, b = (net.a(xi), net.b(other)) if name == "a" else (net.a(other), net.b(xi))
        F.cross_entropy(net.head(torch.cat([a, b], 1).mean((2, 3))), y).backward()
        through[name] = xi.grad
    rows = {r["branch"]: r for r in monitor.last}
    for name, gi in through.items():
        assert rows[name]["share"] == pytest.approx(float((gi * g).sum() / g.square().sum()), rel=1e-5)
        assert rows[name]["grad_norm"] == pytest.approx(float(gi.norm()), rel=1e-5)
    assert rows["a"]["fork_grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert "share" in str(monitor) and "fork cat" in str(monitor)


def test_the_monitor_changes_no_gradient_and_close_removes_it() -> None:
    torch.manual_seed(0)
    net = bg.create_model("googlenet-fmnist", width=0.125)
    twin = copy.deepcopy(net)
    monitor = bg.BranchMonitor(net, (1, 28, 28))
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    _step(net, x, y)
    _step(twin, x, y)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8)
    monitor.update()
    rows = monitor.table()
    forks = {r["fork"] for r in rows}
    assert len(forks) == 9 and len(rows) == 36  # every Inception block, four branches each
    for fork in forks:
        assert sum(r["share"] for r in rows if r["fork"] == fork) == pytest.approx(1.0, abs=1e-4)
    monitor.close()
    _step(net, x, y)
    with pytest.raises(ConfigError, match="no branch gradients arrived"):
        monitor.update()


def test_an_identity_skip_is_the_remainder() -> None:
    torch.manual_seed(0)
    net = ZeroInitResidual()
    nn.init.ones_(net.bn.weight)  # let gradients reach the inner fork
    monitor = bg.BranchMonitor(net, (3, 8, 8))
    for _ in range(2):
        net.zero_grad()
        _step(net, torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
        monitor.update()
    rows = monitor.table()
    assert any(r["branch"].endswith("identity") for r in rows) and rows[0]["updates"] == 2
    for fork in {r["fork"] for r in rows}:
        assert sum(r["share"] for r in rows if r["fork"] == fork) == pytest.approx(1.0, abs=1e-4)


class Untraceable(nn.Module):
    """Two branches on one tensor, and control flow on its values: no fx graph, forks found by probing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.sum() > 0:
            x = x * 2
        return self.head((self.left(x) + self.right(x) + x).mean((2, 3)))


def test_a_model_fx_cannot_trace_is_probed() -> None:
    torch.manual_seed(0)
    net = Untraceable()
    monitor = bg.BranchMonitor(net, (3, 8, 8))
    assert net.training  # the probe's eval forward leaves the mode as it was
    _step(net, torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2,)))
    monitor.update()
    rows = monitor.table()
    assert [r["branch"] for r in rows] == ["left", "right", "(other uses)"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-4)
    written: list[tuple[str, float, int]] = []

    class Writer:
        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

    monitor.write(Writer(), 7)
    assert ("branch_share/input of left, right/left", rows[0]["share"], 7) in written and len(written) == 6


def test_a_model_without_forks_is_one_line() -> None:
    with pytest.raises(ConfigError, match="no fork"):
        bg.BranchMonitor(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 8, 8))
