"""Models torch.fx's symbolic tracer cannot take (Python control flow on a tensor's shape, as in EfficientViT and
MobileViT) are captured with torch.export: summary with branches, optimize (verified), branches, memory and the
report work on them; a model neither can take gets one line saying what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph.graph.tracing import capture
from tests.conftest import run_cli
from tests.nets import ShapeBranchingDenseNet, ValueBranchingNet

NET = "tests/nets.py:ShapeBranchingDenseNet"


def test_a_net_with_shape_control_flow_is_captured_by_torch_export() -> None:
    net = ShapeBranchingDenseNet()
    with pytest.raises(torch.fx.proxy.TraceError):  # the premise: fx's symbolic tracer cannot take it
        torch.fx.symbolic_trace(net)
    captured = capture(net, torch.randn(2, 3, 8, 8))
    assert captured.method == "export" and captured.graph_module is not None
    s = bg.summary(net, (3, 8, 8), batch=2)
    assert s.note is None and len(s.blocks) >= 4
    first_layer = sum(p.numel() for p in net.layers[0].parameters())  # a branch of aten ops knows its modules
    assert first_layer in {b.params for b in s.branches}
    assert all(b.params > 0 for b in s.branches if not b.name.endswith(".identity"))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_optimize_verifies_an_exported_graph(mode: str) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the layout pass in train mode, where oneDNN's defect needs two threads
    try:
        _, report = bg.optimize(ShapeBranchingDenseNet(), (3, 8, 8), mode=mode)
    finally:
        torch.set_num_threads(before)
    assert report.ok and report.captured == "export" and report.verification is not None
    assert "layout" in [p.name for p in report.passes]


def test_cli_on_an_exported_graph(tmp_path: Path) -> None:
    r = run_cli("branches", NET, "--input", "3,8,8")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "forks; the branches' gradients add up" in r.stdout and "layers.3" in r.stdout
    r = run_cli("optimize", NET, "--input", "3,8,8", "--mode", "eval")
    assert r.returncode == 0 and "captured with torch.export" in r.stdout and "verified: ok" in r.stdout, r.stderr
    page = tmp_path / "report.html"
    r = run_cli("report", NET, "--input", "3,8,8", "--batch", "2", "-o", str(page))
    assert r.returncode == 0 and page.stat().st_size > 1000, r.stderr


def test_a_net_neither_tracer_can_take_gets_one_line_naming_the_fix() -> None:
    assert "torch.where or torch.cond" in (bg.summary(ValueBranchingNet(), (3, 8, 8), batch=2).note or "")
    r = run_cli("optimize", "tests/nets.py:ValueBranchingNet", "--input", "3,8,8")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "torch.where or torch.cond" in r.stderr, r.stderr
