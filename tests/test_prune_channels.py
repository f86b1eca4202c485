"""Structured channel pruning: which chains it cuts, exactness when the cut channels are dead, fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph.graph import capture
from branchgraph.passes import prune_channels, reports
from branchgraph.training import build_config, train
from tests.conftest import run_cli


def test_prunes_the_reduce_convs_of_every_inception_block() -> None:
    model = bg.create_model("googlenet-d2l").eval()
    gm = prune_channels(capture(model, torch.randn(1, 1, 96, 96)).graph_module, amount=0.5)
    changed = reports(gm)[-1].changed
    assert len(changed) == 1 + 9 * 2  # the stem's 1x1 -> 3x3, and each block's two reduce convs
    assert gm.get_submodule("b3.0.branch2.0.conv").out_channels == 48  # 96 reduce channels halved
    assert gm.get_submodule("b3.0.branch2.1.conv").in_channels == 48
    assert gm.get_submodule("b3.0.branch1.0.conv").out_channels == 64  # feeds the concat: untouched
    assert gm(torch.randn(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("name", ["googlenet-d2l", "googlenet-fmnist"])
def test_cutting_dead_channels_changes_nothing(name: str) -> None:
    """Silence the weakest half of each prunable channel set; pruning exactly those keeps outputs equal."""
    torch.manual_seed(0)
    model = bg.create_model(name).eval()
    size = bg.models.model_info(name).input_size
    x = torch.randn(2, *size)
    probe = prune_channels(capture(model, x).graph_module, amount=0.5)
    with torch.no_grad():
        for line in reports(probe)[-1].changed:
            first = line.split(" -> ")[0]
            conv = model.get_submodule(first)
            keep = probe.get_submodule(first).out_channels
            drop = torch.randperm(conv.out_channels)[: conv.out_channels - keep]
            conv.weight[drop] = 0
            if conv.bias is not None:
                conv.bias[drop] = 0
            bn = getattr(model.get_submodule(first.rsplit(".", 1)[0]), "bn", None)
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight[drop], bn.bias[drop] = 0, 0
    pruned = prune_channels(capture(model, x).graph_module, amount=0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


def test_prune_and_finetune_a_trained_run(tmp_path: Path, data_dir: Path) -> None:
    config = build_config("fast", overrides={"limit": 512, "epochs": 1, "batch_size": 64, "out_dir": str(tmp_path)})
    run = train(config, progress=False).run_dir
    result = run_cli("prune", str(run), "--amount", "0.5", "--epochs", "1", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"]["pruned"] < data["params"]["original"]
    assert data["macs"]["pruned"] < data["macs"]["original"]
    assert set(data["test_acc"]) == {"original", "pruned", "finetuned"}
    assert Path(data["finetune_run_dir"], "metrics.jsonl").is_file()
    bad = run_cli("prune", str(run), "--amount", "1.5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "amount" in bad.stderr
