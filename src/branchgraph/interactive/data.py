"""What a report page shows, as JSON-ready data: every node of the captured graph with its shape, parameters,
MACs, bytes saved for backward and measured time; the fork/join blocks as a nested layout (a block holds its
branches, a branch its nodes and inner blocks); a checkpoint plan's regions and saving ops on those nodes; each
block's branch gradient shares."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import fx

from branchgraph.graph.draw import op_label
from branchgraph.graph.structure import Block, shape_only, structural_users
from branchgraph.graph.tables import Summary


class _Timer(fx.Interpreter):
    """Runs the graph once, timing every node (seconds, appended per node name)."""

    def __init__(self, gm: fx.GraphModule, times: dict[str, list[float]]) -> None:
        super().__init__(gm)
        self.times = times

    def run_node(self, n: fx.Node) -> Any:
        start = time.perf_counter()
        out = super().run_node(n)
        self.times.setdefault(n.name, []).append(time.perf_counter() - start)
        return out


def node_times(gm: fx.GraphModule, example: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each node in an inference forward of ``gm`` on ``example`` (after one warm-up run)."""
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        _Timer(gm, {}).run(example)
        for _ in range(repeats):
            _Timer(gm, times).run(example)
    return {name: statistics.median(t) for name, t in times.items()}


def layout(order: list[str], blocks: list[Block]) -> list[dict[str, Any]]:
    """The nodes of ``order`` as a nested layout: a block's branches replace their nodes, just before its join;
    a block inside another's branch is laid out inside that branch."""
    members = {b.name: {n for br in b.branches for n in br.nodes} for b in blocks}

    def build(seq: list[str], candidates: list[Block], placed: set[str]) -> list[dict[str, Any]]:
        here = set(seq)
        inside = [b for b in candidates if members[b.name] and members[b.name] <= here]
        top = [b for b in inside if not any(o is not b and members[b.name] < members[o.name] for o in inside)]
        by_join = {}
        for b in top:
            by_join.setdefault(b.join, []).append(b)
        taken = set().union(*(members[b.name] for b in top)) if top else set()
        items: list[dict[str, Any]] = []
        for name in seq:
            for b in by_join.get(name, []):
                rest = [o for o in inside if o not in top and members[o.name] <= members[b.name]]
                branches = []
                for br in b.branches:
                    nodes = [n for n in br.nodes if n not in placed]
                    branches.append({"name": br.name, "items": build(nodes, rest, placed)})
                items.append({"block": b.name, "fork": b.fork, "join": b.join, "branches": branches})
            if name not in taken and name not in placed:
                placed.add(name)
                items.append({"node": name})
        return items

    return build(order, blocks, set())


def report_data(s: Summary, times: dict[str, float] | None = None) -> dict[str, Any]:
    """The page's data for summary ``s`` (its captured graph and measured step)."""
    assert s.capture is not None and s.capture.graph_module is not None and s.measurement is not None
    gm, layers = s.capture.graph_module, s.measurement.layers
    params = {r.name: r.params for r in s.rows if r.leaf}
    nodes = {}
    hidden = shape_only(gm.graph)
    for node in gm.graph.nodes:
        if node in hidden:
            continue
        meta = node.meta.get("tensor_meta")
        rec = layers.get(str(node.target)) if node.op == "call_module" else None
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        nodes[node.name] = {
            "name": node.name, "op": op_label(node, gm), "module": str(node.target) if node.op == "call_module" else "",
            "owner": str(stack[-1][0]) if stack and isinstance(stack[-1], tuple) else "",
            "shape": list(meta.shape) if hasattr(meta, "shape") else None,
            "params": params.get(str(node.target), 0) if node.op == "call_module" else 0,
            "macs": rec.macs if rec else 0, "saved_bytes": rec.saved_bytes if rec else 0,
            "time_ms": 1000 * (times or {}).get(node.name, 0.0),
            "fork": len(structural_users(node, hidden)) > 1 and node.op != "output",
        }
    join_names = {b.join for b in s.blocks}
    for name in join_names & set(nodes):
        nodes[name]["join"] = True
    return {"model": s.model, "input": [s.batch, *s.input_size], "total": s.total, "peak_bytes": s.peak_bytes,
            "nodes": nodes, "layout": layout(list(nodes), s.blocks),
            "modules": [{"name": r.name, "type": r.type, "shape": r.output_shape, "params": r.params,
                         "macs": r.macs, "backward_macs": r.backward_macs, "saved_bytes": r.saved_bytes}
                        for r in s.rows if r.name],
            "plan": None, "branches": None, "hidden_shape_nodes": len(hidden)}


def _owned(node: dict[str, Any], label: str) -> bool:
    """Whether ``node`` is ``label`` (a node name) or runs inside the module at path ``label``."""
    path = node["module"] or node["owner"]
    return label in (node["name"], path) or path.startswith(label + ".")


def _index(order: list[str], nodes: dict[str, dict[str, Any]], label: str, last: bool = False) -> int | None:
    """Where ``label`` (a module path, else a node name) first (``last``: last) appears in ``order``."""
    found = [i for i, n in enumerate(order) if _owned(nodes[n], label)]
    return (found[-1] if last else found[0]) if found else None


def plan_overlay(plan: Any, nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint plan on the report's nodes: per region its name, node names and kind, the saving ops' nodes,
    and the predicted and measured figures. Graph regions span their first to last node (module paths, else node
    names); module regions every node calling into the module (or the segment's children)."""
    order = list(nodes)
    regions = []
    for r in plan.regions:
        if r.kind == "graph":
            start, stop = _index(order, nodes, r.first), _index(order, nodes, r.last, last=True)
            members = order[start:stop + 1] if start is not None and stop is not None else []
        else:
            prefixes = ([f"{r.path}.{i}" for i in range(r.start, r.stop)] if r.kind == "segment" and r.start is not None
                        and r.stop is not None else [r.path])
            members = [n for n in order if any(not p or _owned(nodes[n], p) for p in prefixes)]
        regions.append({"name": r.name, "kind": r.kind, "nodes": members})
    saving = [name for text in plan.saving_op_names for name in text.split(" (")[0].split("+") if name in nodes]
    d = plan.to_dict()
    return {"regions": regions, "saving_ops": saving, "saved_bytes": plan.saved_bytes,
            "plain_saved_bytes": plan.plain_saved_bytes, "budget_bytes": plan.budget_bytes,
            "predicted_peak_bytes": plan.predicted_peak_bytes, "measured_peak_bytes": plan.measured_peak_bytes,
            "plain_measured_peak_bytes": plan.plain_measured_peak_bytes, "grad_change": plan.grad_change,
            "extra_forward_time_fraction": d["extra_forward_time_fraction"]}


def branch_shares(forks: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Per fork node (of ``fork_gradients``' reports): each branch's share of the fork's gradient."""
    return {f.fork: [{"name": b.name, "share": b.share, "grad_norm": b.grad_norm} for b in f.branches]
            for f in forks}
