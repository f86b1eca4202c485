"""Inception block options (seed 000): learnable branch gates and per-branch normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph.errors import ConfigError
from branchgraph.models import Inception
from branchgraph.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.conftest import run_cli


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


def test_gates_are_trained_saved_and_restored(tmp_path: Path, data_dir: Path) -> None:
    r = run_cli("train", "--model", "googlenet-fmnist", "--model-kwargs", '{"gates": true}', "--epochs", "1",
                "--limit", "256", "--batch-size", "64", "--out-dir", str(tmp_path), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    run_dir = Path(json.loads(r.stdout)["run_dir"])
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]
    gates = {k: v for k, v in state.items() if k.endswith("gate_logits")}
    assert len(gates) == 9 and all(v.abs().max() > 0 for v in gates.values())
    model = bg.create_model("googlenet-fmnist", gates=True)
    model.load_state_dict(state)
    assert torch.equal(model.get_submodule("b3.0").gate_logits, gates["b3.0.gate_logits"])
