"""Pictures show structure: shape reads and checks (timm's ``_assert(x.ndim == 4)``, ``B, C, H, W = x.shape``) are
neither drawn nor make their input a fork, and the page and the graph say how many were left out."""

from __future__ import annotations

import pytest

import branchgraph as bg
from branchgraph.interactive.data import report_data
from tests.nets import CheckedNet


def test_report_and_graph_leave_out_shape_checks_and_count_them() -> None:
    s = bg.summary(CheckedNet(), (3, 8, 8), batch=2)
    data = report_data(s)
    ops = [n["op"] for n in data["nodes"].values()]
    assert not any("getattr" in op or "_assert" in op or op.startswith("eq") for op in ops), ops
    assert data["hidden_shape_nodes"] >= 8  # 3 layers x (getattr, eq, _assert), the input's shape and its checks
    forks = [name for name, n in data["nodes"].items() if n["fork"]]
    assert forks == ["relu"], forks  # the residual's fork only: not the input, not every checked layer's input
    graphviz = pytest.importorskip("graphviz")
    from branchgraph.graph.draw import to_digraph

    source = to_digraph(s).source
    assert isinstance(to_digraph(s), graphviz.Digraph)
    assert "_assert" not in source and source.count("FORK") == 1
    assert f"{data['hidden_shape_nodes']} shape reads and checks not drawn" in source
