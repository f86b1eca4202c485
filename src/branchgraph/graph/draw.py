"""Pictures of a captured graph (Graphviz): forks and joins marked, each Inception block's branches side by
side in their own clusters, nodes labelled with op, shape, MACs and saved bytes, and coloured by MACs."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz
from matplotlib import colormaps
from matplotlib.colors import to_hex
from torch import fx

from branchgraph.errors import BranchgraphError
from branchgraph.graph.fmt import fmt_bytes, fmt_count
from branchgraph.graph.structure import joins, shape_only, structural_users
from branchgraph.graph.tables import Summary

FORMATS = (".svg", ".dot", ".gv", ".html")
COLORMAP = colormaps["YlOrRd"]


def op_label(node: fx.Node, gm: fx.GraphModule) -> str:
    """What a node runs: its module's class, its function's name, or its fx op."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    if node.op in ("call_function", "call_method"):
        return getattr(node.target, "__name__", str(node.target))
    return node.op


def _colour(macs: int, largest: int) -> str:
    """White for free ops, then yellow to red on a log scale of the node's share of the largest MACs."""
    if macs <= 0 or largest <= 0:
        return "#ffffff"
    return to_hex(COLORMAP(0.15 + 0.85 * max(0.0, 1 + math.log10(macs / largest) / 4)))


def _node_label(node: fx.Node, gm: fx.GraphModule, layers: dict[str, Any], largest: int, hidden: set[fx.Node],
                is_join: bool) -> tuple[str, dict[str, str]]:
    """A node's box: its operator, shape, MACs and saved bytes, FORK/JOIN marks, filled by its share of MACs."""
    meta = node.meta.get("tensor_meta")
    shape = "x".join(map(str, meta.shape)) if hasattr(meta, "shape") else ""
    rec = layers.get(str(node.target)) if node.op == "call_module" else None
    macs, saved = (rec.macs, rec.saved_bytes) if rec else (0, 0)
    lines = [f"{node.name}: {op_label(node, gm)}", shape]
    if macs or saved:
        lines.append(f"{fmt_count(macs)} MACs, saved {fmt_bytes(saved)}")
    attrs = {"fillcolor": _colour(macs, largest)}
    users = structural_users(node, hidden)
    if len(users) > 1:
        lines.insert(0, f"FORK x{len(users)}")
        attrs.update(shape="box", penwidth="2.5", color="#1f77b4")
    if is_join:
        lines.insert(0, "JOIN")
        attrs.update(shape="invhouse", penwidth="2.5", color="#2ca02c")
    return "\n".join(x for x in lines if x), attrs


def _cluster(clusters: dict[str, graphviz.Digraph], block: str, branch: str) -> graphviz.Digraph:
    """The dashed cluster of ``block`` and, inside it, the rounded one of its ``branch`` (made on first use)."""
    if block not in clusters:
        clusters[block] = graphviz.Digraph(f"cluster_{block}", graph_attr={
            "label": block, "style": "dashed", "color": "#888888"})
    key = f"{block}/{branch}"
    if key not in clusters:
        clusters[key] = graphviz.Digraph(f"cluster_{key}", graph_attr={
            "label": branch.removeprefix(block + "."), "style": "rounded", "color": "#bbbbbb"})
    return clusters[key]


def to_digraph(s: Summary) -> graphviz.Digraph:
    """The Graphviz graph of a summary's captured fx graph."""
    if s.capture is None or s.capture.graph_module is None or s.measurement is None:
        raise BranchgraphError(f"cannot draw {s.model}: {s.note or 'no fx graph was captured'}")
    gm, layers = s.capture.graph_module, s.measurement.layers
    join_names = {n.name for n in joins(gm.graph)}
    largest = max((r.macs for r in layers.values()), default=0)
    where: dict[str, tuple[str, str]] = {}
    for block in s.blocks:
        for branch in block.branches:
            for node_name in branch.nodes:
                where.setdefault(node_name, (block.name, branch.name))
    dot = graphviz.Digraph(s.model, graph_attr={"rankdir": "TB", "fontname": "Helvetica", "newrank": "true",
                                                "label": f"{s.model} at {[s.batch, *s.input_size]}",
                                                "labelloc": "t"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                      "fontsize": "10"})
    clusters: dict[str, graphviz.Digraph] = {}
    hidden = shape_only(gm.graph)
    if hidden:
        dot.attr(label=f"{s.model} at {[s.batch, *s.input_size]}; {len(hidden)} shape reads and checks not drawn")
    for node in gm.graph.nodes:
        if node in hidden:
            continue
        label, attrs = _node_label(node, gm, layers, largest, hidden, node.name in join_names)
        target = _cluster(clusters, *where[node.name]) if node.name in where else dot
        target.node(node.name, label, **attrs)
        for arg in node.all_input_nodes:
            if arg not in hidden:
                dot.edge(arg.name, node.name)
    for key, sub in clusters.items():
        if "/" in key:
            clusters[key.split("/")[0]].subgraph(sub)
    for key, sub in clusters.items():
        if "/" not in key:
            dot.subgraph(sub)
    return dot


@dataclass
class Drawing:
    """A picture written: of which model, where, and how many fork/join blocks and branches it shows."""

    model: str
    output: Path
    blocks: int
    branches: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "output": str(self.output), "blocks": self.blocks, "branches": self.branches}

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        return f"wrote {self.output}: {self.blocks} fork/join blocks, {self.branches} branches"


def draw(s: Summary, path: str | Path) -> Path:
    """Write the picture as .dot/.gv (Graphviz source), .svg, or self-contained .html (inline SVG)."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise BranchgraphError(f"cannot write {path}: the picture format must be one of {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise BranchgraphError(f"cannot write {path}: the folder {path.parent} does not exist")
    dot = to_digraph(s)
    if path.suffix in (".dot", ".gv"):
        return _write(path, dot.source)
    try:
        svg = dot.pipe(format="svg").decode()
    except graphviz.ExecutableNotFound:
        raise BranchgraphError(
            "the Graphviz program 'dot' is missing: install it with 'sudo apt-get install graphviz', "
            "or write a .dot file instead"
        ) from None
    if path.suffix == ".svg":
        return _write(path, svg)
    return _write(path, _html_page(s, svg[svg.index("<svg"):]))


def _write(path: Path, text: str) -> Path:
    try:
        path.write_text(text)
    except OSError as exc:
        raise BranchgraphError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _html_page(s: Summary, svg: str) -> str:
    t = s.total
    rows = "".join(
        f"<tr><td>{html.escape(b.name)}</td><td>{b.params:,}</td><td>{fmt_count(b.macs)}</td>"
        f"<td>{b.macs_share:.1%}</td><td>{fmt_bytes(b.saved_bytes)}</td></tr>" for b in s.branches
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(s.model)} - branchgraph</title>
<style>body{{font-family:Helvetica,Arial,sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
.graph{{overflow:auto;border:1px solid #ddd}}</style></head><body>
<h1>{html.escape(s.model)}</h1>
<p>Input {[s.batch, *s.input_size]}; {t['params']:,} parameters; {fmt_count(t['macs'])} forward MACs,
{fmt_count(t['backward_macs'])} backward MACs; saved for backward (measured) {fmt_bytes(t['saved_bytes'])}.
Blue boxes are forks, green houses are joins; colour shows forward MACs (log scale, white = none).</p>
<div class="graph">{svg}</div>
<h2>Branches</h2><table><tr><th>branch</th><th>params</th><th>MACs</th><th>share of block</th><th>saved</th></tr>
{rows}</table></body></html>
"""
