"""Inception block options (seed 000): learnable branch gates and per-branch normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph.errors import ConfigError
from branchgraph.models import Inception, model_info
from branchgraph.training.run_state import CHECKPOINT_NAME, load_checkpoint
from tests.conftest import run_cli
from tests.nets import ZeroInitResidual

FIXTURES = "tests/nets.py"


def _block(**options: object) -> Inception:
    torch.manual_seed(0)
    return Inception(16, 8, (8, 12), (4, 6), 6, bn=True, **options)


def test_gated_block_starts_as_the_plain_block_and_its_gates_learn() -> None:
    plain, gated = _block(), _block(gates=True)
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=0)
    (gated(x) * torch.randn(2, 32, 7, 7)).sum().backward()
    assert gated.gate_logits is not None and gated.gate_logits.grad is not None
    assert (gated.gate_logits.grad.abs() > 0).all()
    assert gated.gate_logits.grad.sum().abs() < 1e-5  # softmax: moving every logit alike changes nothing


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_branch_norm_normalises_each_branch_before_the_concat(kind: str) -> None:
    block = _block(branch_norm=kind).train()
    out = block(torch.randn(4, 16, 5, 5) * 7 + 3)
    branches = out.split([8, 12, 6, 6], dim=1)
    for b in branches:
        mean = b.mean(dim=(0, 2, 3)) if kind == "batch" else b.mean(dim=1)
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)


def test_invalid_branch_norm_is_named() -> None:
    with pytest.raises(ConfigError, match="branch_norm must be one of"):
        bg.create_model("googlenet-fmnist", branch_norm="group")


def test_gates_are_trained_saved_and_restored_and_branch_stats_leave_training_unchanged(
        tmp_path: Path, data_dir: Path) -> None:
    """A gated run with --branch-stats: the gates learn and are checkpointed, the statistics are written (jsonl,
    epoch metrics, heatmap, gate values), and the run's losses equal those of the same run without statistics."""
    from branchgraph.training import build_config, train

    args = {"model_kwargs": {"gates": True}, "epochs": 1, "limit": 256, "batch_size": 64, "val_size": 64,
            "out_dir": str(tmp_path)}
    r = run_cli("train", "--model-kwargs", '{"gates": true}', "--epochs", "1", "--limit", "256", "--batch-size",
                "64", "--val-size", "64", "--branch-stats", "2", "--out-dir", str(tmp_path), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    run_dir = Path(json.loads(r.stdout)["run_dir"])
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]
    gates = {k: v for k, v in state.items() if k.endswith("gate_logits")}
    assert len(gates) == 9 and all(v.abs().max() > 0 for v in gates.values())
    model = bg.create_model("googlenet-fmnist", gates=True)
    model.load_state_dict(state)
    assert torch.equal(model.get_submodule("b3.0").gate_logits, gates["b3.0.gate_logits"])

    records = [json.loads(line) for line in (run_dir / "branch_stats.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [0, 2]  # 192 training images / 64 = 3 steps, every 2nd
    assert all(len(r["blocks"]) == 9 and len(r["blocks"]["b3.0"]["gates"]) == 4 for r in records)
    assert (run_dir / "branch_stats.png").stat().st_size > 10_000
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["branch_imbalance_max"] >= metrics["branch_imbalance"] >= 1
    plain = train(build_config(overrides=args), progress=False).final
    for key in ("train_loss", "train_acc", "val_loss", "test_loss", "test_acc"):
        assert metrics[key] == plain[key], key


def _record(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> dict:
    from branchgraph.analysis.branch_stats import BranchStats

    stats = BranchStats(model)
    with stats.recording():
        (torch.nn.functional.cross_entropy(model(x), target) * scale).backward()
    return stats.collect(scale)


def test_branch_stats_agree_with_fork_gradients_and_autograd() -> None:
    """float64: the hooks' input-gradient norms and shares equal fork_gradients' (fx taps, a different mechanism);
    each branch's output gradient is its slice of the gradient at the concat; parameter norms are the grads'."""
    from branchgraph.analysis import fork_gradients

    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist").double().train()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    target = torch.randint(0, 10, (2,), generator=torch.Generator().manual_seed(0))
    reference = {r.block: r for r in fork_gradients(model, x, seed=0)}
    joins: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        out.retain_grad()
        joins["b4.2"] = out

    block = model.get_submodule("b4.2")
    block.register_forward_hook(keep)
    blocks = _record(model, x, target)
    assert list(blocks) == list(reference)
    for name, record in blocks.items():
        ref = reference[name]
        assert record["imbalance"] == pytest.approx(ref.imbalance, rel=1e-10)
        for b, mine in zip(ref.branches, record["branches"].values(), strict=True):
            assert mine["input_grad"] == pytest.approx(b.grad_norm, rel=1e-10)
            assert mine["share"] == pytest.approx(b.share, rel=1e-9, abs=1e-12)
    grad = joins["b4.2"].grad
    assert grad is not None
    widths = [out.shape[1] for out in (branch(torch.zeros(1, block.in_channels, 4, 4, dtype=torch.float64))
                                      for _, branch in block.branches())]
    for (name, branch), part in zip(block.branches(), grad.split(widths, dim=1), strict=True):
        stats = blocks["b4.2"]["branches"][name]
        assert stats["output_grad"] == pytest.approx(float(part.norm()), rel=1e-12)
        params = torch.cat([p.grad.flatten() for p in branch.parameters()])
        assert stats["param_grad"] == pytest.approx(float(params.norm()), rel=1e-12)


def test_branch_stats_leave_no_hooks_and_undo_the_loss_scale() -> None:
    """Off means untouched: no hook stays on any module after a recorded step. A scaled loss (fp16's GradScaler)
    gives the same statistics once collect divides by the scale."""
    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist", gates=True, branch_norm="layer").double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    target = torch.tensor([1, 7])
    plain = _record(model, x, target)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.zero_grad()
    scaled = _record(model, x, target, scale=1024.0)
    for name, record in plain.items():
        assert record["gates"] == scaled[name]["gates"] == [1.0] * 4
        for branch, values in record["branches"].items():
            for key, value in values.items():
                assert scaled[name]["branches"][branch][key] == pytest.approx(value, rel=1e-12), (name, branch, key)


def test_branch_stats_through_reversible_and_checkpointed_blocks() -> None:
    """Blocks whose forward is recomputed in backward (reversible couplings) are recorded too, and so are the
    blocks of a model under a memory plan (while the recording hooks are armed it runs its own forward)."""
    from branchgraph.memory import plan

    torch.manual_seed(0)
    x, target = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for model in (bg.create_model("revinception-fmnist"),
                  plan(bg.create_model("googlenet-fmnist"), x, 0.25)[0]):
        blocks = _record(model.train(), x, target)
        assert blocks and all(b["branches"]["branch2"]["input_grad"] > 0 for b in blocks.values())
        assert all(sum(s["share"] for s in b["branches"].values()) == pytest.approx(1.0, abs=1e-4)
                   for b in blocks.values())


def test_branch_stats_need_a_model_with_forks(tmp_path: Path, data_dir: Path) -> None:
    """Any model with forks is recorded (tests/test_your_data.py); one without says so in one line."""
    from branchgraph.training import TrainConfig

    r = run_cli("train", "--model", "tests/nets.py:ValueBranchingNet", "--model-kwargs", '{"in_chans": 1}', "--limit",
                "128", "--branch-stats", "--precision", "fp32", "--no-channels-last", "--out-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no fork whose branches start with a module" in r.stderr
    with pytest.raises(ConfigError, match="branch_stats must be a positive number"):
        TrainConfig(branch_stats=0).validate()

INCEPTION_MODELS = [m for m in bg.list_models()
                    if any(isinstance(x, Inception) for x in bg.create_model(m).modules())]
SIZES = {"googlenet": (3, 64, 64), "googlenet-bn": (3, 64, 64)}


@pytest.mark.parametrize("name", INCEPTION_MODELS)
def test_fork_gradient_is_the_sum_of_the_branch_contributions(name: str) -> None:
    """float64, every Inception model: the per-use gradients add up to the fork's (taken in a separate run)
    within 1e-12 normwise, the shares add up to 1, and every Inception block's four branches are seen."""
    from branchgraph.analysis import fork_gradients

    c, h, w = model_info(name).input_size
    size = SIZES.get(name, (c, min(h, 48), min(w, 48)))
    torch.manual_seed(0)
    model = bg.create_model(name).double()
    reports = fork_gradients(model, torch.randn(2, *size, dtype=torch.float64))
    for r in reports:
        assert r.sum_error < 1e-12, r
        assert sum(b.share for b in r.branches) == pytest.approx(1.0, abs=1e-9)
    seen = {(r.block, b.name) for r in reports for b in r.branches}
    for block in (n for n, m in model.named_modules() if isinstance(m, Inception)):
        assert {(block, f"{block}.branch{i}") for i in range(1, 5)} <= seen, block


def test_fork_gradient_identity_fails_when_a_use_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: with one branch's contribution dropped the sum no longer matches."""
    from branchgraph.analysis import forks

    real = forks._Tap.forward
    monkeypatch.setattr(forks._Tap, "forward", lambda self, x: x.view_as(x) if self.key.endswith("/0")
                        else real(self, x))
    torch.manual_seed(0)
    reports = forks.fork_gradients(bg.create_model("googlenet-fmnist").double(),
                                   torch.randn(2, 1, 28, 28, dtype=torch.float64))
    assert all(r.sum_error > 1e-3 for r in reports)


def test_cli_branches_json() -> None:
    r = run_cli("branches", "googlenet-fmnist", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["forks"]) == 9 and data["max_sum_error"] < 1e-12
    assert all(f["imbalance"] >= 1 for f in data["forks"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_passes_keep_branch_norm_and_gates_exact(mode: str) -> None:
    """The default passes on the options, float64 within 1e-12. Regression: fold_bn's weights used to be folded
    in float32 and cast, which put 2e-7 of rounding into the float64 check once a LayerNorm amplified it."""
    from branchgraph.passes import optimize

    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist", branch_norm="layer", gates=True)
    _, report = optimize(model, torch.randn(2, 1, 28, 28), mode=mode)
    checks = report.verification.to_dict()["float64_equivalence"]
    assert all(c["norm_rel"] < 1e-12 for c in checks.values()), checks


def test_a_fork_no_gradient_reaches_says_why_instead_of_zero_shares() -> None:
    """Behind a zero-initialised BatchNorm the inner fork gets no gradient: the report says so (JSON and text),
    and the outer fork, which the residual path still reaches, has shares as usual."""
    reports = {r.fork: r for r in bg.branches(ZeroInitResidual(), (3, 8, 8), batch=2)}
    inner, outer = reports["conv"], reports["stem"]
    assert inner.grad_norm == 0 and "zero-initialised" in inner.note
    assert outer.grad_norm > 0 and not outer.note
    r = run_cli("branches", f"{FIXTURES}:ZeroInitResidual", "--input", "3,8,8", "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert "|g| 0: no gradient reached this fork" in r.stdout
    zero_shares = [line for line in r.stdout.splitlines() if "|g_i| 0.000e+00" in line]
    assert zero_shares and all("no gradient: a zero-initialised layer" in line for line in zero_shares)
