"""The parallel pass: structure, branches really running on several threads (forward and backward), caller state
(grad mode, autocast) carried into the workers, what it skips, names, and the CLI benchmark. Equality with the
sequential model over the whole registry is in test_passes (every pass x every model x train/eval)."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph.graph import capture
from branchgraph.passes import (
    ParallelBranches,
    PassError,
    fuse_parallel,
    optimize,
    original_parameters,
    parallel,
    to_original_state_dict,
)
from tests.conftest import run_cli


def _captured(name: str = "googlenet-fmnist", size: tuple[int, ...] = (1, 28, 28)) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    gm = capture(bg.create_model(name), torch.randn(2, *size)).graph_module
    assert gm is not None
    return gm


def test_every_inception_block_becomes_one_parallel_module() -> None:
    """googlenet-d2l: 9 blocks x 4 branches; after fuse_parallel too (its fused 1x1 conv runs before the branches)."""
    gm = _captured("googlenet-d2l", (1, 64, 64))
    for model in (parallel(gm), parallel(fuse_parallel(gm))):
        blocks = [m for m in model.modules() if isinstance(m, ParallelBranches)]
        assert len(blocks) == 9 and all(len(b.branches) == 4 for b in blocks)
        calls = [n for n in model.graph.nodes if n.op == "call_module" and n.target.startswith("parallel_")]
        assert len(calls) == 9
    assert not any(isinstance(m, ParallelBranches) for m in gm.modules())  # the input is left alone


def test_branches_run_on_several_threads_forward_and_backward() -> None:
    gm = parallel(_captured()).train()
    block = next(m for m in gm.modules() if isinstance(m, ParallelBranches))
    forward: set[int] = set()
    backward: set[int] = set()
    for branch in block.branches:
        branch.register_forward_hook(lambda *_: forward.add(threading.get_ident()))
        for p in branch.parameters():
            p.register_hook(lambda g: backward.add(threading.get_ident()) or g)
    gm(torch.randn(2, 1, 28, 28)).sum().backward()
    assert len(forward) >= 2 and len(backward) >= 2, (forward, backward)


def test_grad_mode_and_autocast_reach_the_workers() -> None:
    """Both are thread-local in PyTorch: without carrying them over, workers would build graphs under no_grad and
    run fp32 under autocast."""
    gm, reference = parallel(_captured()).eval(), _captured().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = gm(x)
    assert not out.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = gm(x), reference(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_autograd_grad_and_original_names() -> None:
    """torch.autograd.grad (not only .backward) reaches the parameters inside; names are the original model's and the
    state dict loads into it."""
    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist").double()
    gm = parallel(capture(model, torch.randn(2, 1, 28, 28, dtype=torch.float64)).graph_module)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    params = dict(model.named_parameters())
    assert set(original_parameters(gm)) == set(params)
    mine = original_parameters(gm)
    names = sorted(params)
    got = torch.autograd.grad(gm(x).sum(), [mine[n] for n in names])
    want = torch.autograd.grad(model(x).sum(), [params[n] for n in names])
    for name, g, w in zip(names, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)
    model.load_state_dict(to_original_state_dict(gm))


class _DropoutBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(4, 4, 1))
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


def test_blocks_it_cannot_run_concurrently_are_skipped_and_named() -> None:
    gm = parallel(capture(_DropoutBranch(), torch.randn(1, 4, 5, 5)).graph_module)
    report = gm.meta["branchgraph.pass_reports"][-1]
    assert not report.changed and "dropout" in report.skipped[0]
    resnet = parallel(_captured("resnet32", (3, 16, 16))).meta["branchgraph.pass_reports"][-1]
    # a residual unit overlaps its two paths only where the shortcut computes something (the stage's first unit)
    assert resnet.changed == ["stage2.0: 2 branches run concurrently", "stage3.0: 2 branches run concurrently"]
    assert len(resnet.skipped) == 13 and all("fewer than two branches" in s for s in resnet.skipped)


def test_a_failing_branch_raises_in_the_caller() -> None:
    gm = parallel(_captured()).eval()
    block = next(m for m in gm.modules() if isinstance(m, ParallelBranches))

    def fail(*_: object) -> None:
        raise RuntimeError("branch 3 broke")
    block.branches[3].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="branch 3 broke"):
        gm(torch.randn(2, 1, 28, 28))


def test_parallel_must_be_the_last_pass() -> None:
    with pytest.raises(PassError, match="parallel must come last"):
        optimize(bg.create_model("googlenet-fmnist"), torch.randn(2, 1, 28, 28), passes=["parallel", "inplace"])


def test_cli_bench_parallel_json() -> None:
    r = run_cli("bench-parallel", "googlenet-fmnist", "--batches", "1,2", "--rounds", "1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["device"] == "cpu" and set(data["batches"]) == {"1", "2"}
    assert all(b["sequential_ms"] > 0 and b["parallel_ms"] > 0 for b in data["batches"].values())
    r = run_cli("bench-parallel", "googlenet-fmnist", "--batches", "1,0")
    assert r.returncode == 2 and "--batches" in r.stderr and "Traceback" not in r.stderr


def test_tracing_sees_every_branch() -> None:
    """Tracers (jit.trace, hence ONNX export; torch.compile) record one thread: under them the branches run in order,
    so the traced graph computes the model on new inputs too."""
    gm = parallel(_captured()).eval()
    with torch.no_grad():
        traced = torch.jit.trace(gm, torch.randn(2, 1, 28, 28))
        x = torch.randn(3, 1, 28, 28)
        torch.testing.assert_close(traced(x), gm(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gated_and_normalised_blocks_run_concurrently_and_exactly(mode: str) -> None:
    """Gates make each branch read a second outside value (its gate), so the argument wiring is exercised."""
    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist", gates=True, branch_norm="layer")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate_logits"):
                p.copy_(torch.randn(4))  # distinct gates: a branch wired to another's gate would show
    _, report = optimize(model, torch.randn(2, 1, 28, 28), passes=["parallel"], mode=mode)
    assert len(report.passes[-1].changed) == 9
    checks = report.verification.to_dict()["float64_equivalence"]
    assert all(c["norm_rel"] < 1e-12 for c in checks.values()), checks
