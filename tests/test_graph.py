"""Graph capture, fork/join/branch discovery, and pictures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph import summary
from branchgraph.graph import capture, find_blocks, forks, joins
from branchgraph.graph.draw import draw
from tests.conftest import run_cli


def test_googlenet_d2l_blocks_and_branches() -> None:
    gm = capture(bg.create_model("googlenet-d2l"), torch.randn(1, 1, 96, 96)).graph_module
    assert len(forks(gm.graph)) == 9 and len(joins(gm.graph)) == 9
    blocks = find_blocks(gm)
    assert [b.name for b in blocks] == ["b3.0", "b3.1", "b4.0", "b4.1", "b4.2", "b4.3", "b4.4", "b5.0", "b5.1"]
    for block in blocks:
        assert [br.name for br in block.branches] == [f"{block.name}.branch{i}" for i in range(1, 5)]
        assert block.branches[3].modules[0] == f"{block.name}.branch4.0"  # the 3x3 max-pool leads branch 4
    assert all(n.meta["tensor_meta"].shape is not None for n in gm.graph.nodes if n.op != "output")


def test_paper_googlenet_block_names() -> None:
    s = summary("googlenet")
    assert [b.name for b in s.blocks][:2] == ["inception3a", "inception3b"]
    assert len(s.blocks) == 9 and len(s.branches) == 36


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_residual_add_has_an_identity_branch() -> None:
    blocks = find_blocks(capture(Residual(), torch.randn(1, 4, 8, 8)).graph_module)
    assert len(blocks) == 1
    assert sorted(b.name.split(".")[-1] for b in blocks[0].branches) == ["body", "identity"]


@pytest.fixture(scope="module")
def d2l_summary():
    return summary("googlenet-d2l")


def test_dot_shows_forks_joins_and_branch_clusters(tmp_path: Path, d2l_summary) -> None:
    source = draw(d2l_summary, tmp_path / "g.dot").read_text()
    assert source.count("FORK x4") == 9 and source.count("JOIN") == 9
    assert "subgraph cluster_b3.0 {" in source or 'subgraph "cluster_b3.0" {' in source
    for i in range(1, 5):
        assert f"cluster_b3.0/b3.0.branch{i}" in source


def test_svg_and_self_contained_html(tmp_path: Path, d2l_summary) -> None:
    svg = draw(d2l_summary, tmp_path / "g.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    for i in range(1, 5):  # every block's four branch clusters are drawn with their labels
        assert text.count(f">branch{i}</text>") == 9
    assert ">b3.0</text>" in text and ">b5.1</text>" in text
    page = draw(d2l_summary, tmp_path / "g.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    for external in ('src="http', "<script src", "<link ", "@import"):
        assert external not in page
    assert page.count("<tr>") == 1 + 36  # header + one row per branch


def test_graph_command(tmp_path: Path) -> None:
    result = run_cli("graph", "googlenet-fmnist", "-o", str(tmp_path / "g.svg"), "--json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.svg").stat().st_size > 10_000
    bad = run_cli("graph", "googlenet-fmnist", "-o", str(tmp_path / "g.pdf"))
    assert bad.returncode == 2 and "must be one of" in bad.stderr
    missing = run_cli("graph", "googlenet-fmnist", "-o", str(tmp_path / "no" / "g.svg"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
