"""``summary(model, input_size, batch)``: per-module and per-branch params, MACs and measured saved bytes, and
their text tables (one model, or two side by side; golden-file tested)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from branchgraph.errors import ConfigError
from branchgraph.example import example_for
from branchgraph.graph.cost import param_counts
from branchgraph.graph.fmt import fmt_bytes, fmt_count, shape_text
from branchgraph.graph.operators import COUNTED, operator_macs
from branchgraph.graph.record import LayerRecord, Measurement, measure
from branchgraph.graph.structure import Block, find_blocks
from branchgraph.graph.tracing import Capture, capture

MB = 1024.0**2
BYTES_PER_VALUE = 4  # torchsummary's convention: float32 everywhere


@dataclass
class ModuleRow:
    """One module (a leaf layer or a container, with its subtree's totals)."""

    name: str
    type: str
    depth: int
    output_shape: list[int] | None
    params: int
    params_no_bias: int
    macs: int
    backward_macs: int
    saved_bytes: int
    leaf: bool


@dataclass
class BranchRow:
    """One branch of a fork/join block, with its share of the block's forward MACs."""

    block: str
    name: str
    modules: list[str]
    output_shape: list[int] | None
    params: int
    params_no_bias: int
    macs: int
    backward_macs: int
    saved_bytes: int
    macs_share: float


@dataclass
class Summary:
    """What ``branchgraph summary`` prints; ``to_dict``/``to_text`` render it."""

    model: str
    input_size: tuple[int, ...]
    batch: int
    rows: list[ModuleRow]
    branches: list[BranchRow]
    total: dict[str, Any]
    peak_bytes: int | None
    note: str | None = None
    blocks: list[Block] = field(default_factory=list, repr=False)
    capture: Capture | None = field(default=None, repr=False)
    measurement: Measurement | None = field(default=None, repr=False)

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        """JSON-ready: totals, module rows (to ``depth``), branch rows, the measured peak and any note."""
        rows = [r for r in self.rows if depth is None or r.depth <= depth]
        return {
            "model": self.model, "input_size": list(self.input_size), "batch": self.batch,
            "total": self.total, "peak_bytes": self.peak_bytes, "note": self.note,
            "modules": [{k: v for k, v in asdict(r).items() if k != "leaf"} for r in rows],
            "branches": [asdict(b) for b in self.branches],
        }

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self, depth: int | None = None) -> str:
        """The printed table (golden-file tested)."""
        return render_summary(self, depth)


def summary(
    module: nn.Module, input_size: tuple[int, ...], batch: int = 1, seed: int = 0, name: str | None = None
) -> Summary:
    """Capture ``module``, measure one training step on a random batch of ``batch`` x ``input_size``, and tabulate
    per module and per branch. The module itself is not modified. (``branchgraph.summary`` also takes registry
    names and model specs.)"""
    if batch <= 0:
        raise ConfigError(f"batch must be a positive integer; got {batch}", "batch")
    name = name or type(module).__name__
    size = tuple(input_size)
    example, _ = example_for(size, batch, seed)
    work = copy.deepcopy(module)
    captured = capture(work, example)
    measured = measure(work, example)
    rows = _module_rows(work, measured)
    blocks = find_blocks(captured.graph_module) if captured.graph_module is not None else []
    branches = _branch_rows(blocks, captured, work, measured.layers)
    params = sum(p.numel() for p in work.parameters())
    params_no_bias = sum(param_counts(m)[1] for m in work.modules())
    leaf_values = sum(math.prod(r.output_shape) for r in rows if r.leaf and r.output_shape)
    input_mb = batch * math.prod(size) * BYTES_PER_VALUE / MB
    fb_mb = 2.0 * leaf_values * BYTES_PER_VALUE / MB
    params_mb = params * BYTES_PER_VALUE / MB
    total = {
        "params": params,
        "params_no_bias": params_no_bias,
        "macs": sum(r.macs for r in measured.layers.values()),
        "backward_macs": sum(r.backward_macs for r in measured.layers.values()),
        "saved_bytes": measured.saved_bytes,
        "input_mb": input_mb,
        "forward_backward_mb": fb_mb,
        "params_mb": params_mb,
        "total_mb": input_mb + fb_mb + params_mb,
        "macs_by_operator": operator_macs(copy.deepcopy(module).train(), example),
    }
    total["forward_macs"] = sum(total["macs_by_operator"][k] for k in COUNTED)
    return Summary(model=name, input_size=size, batch=batch, rows=rows, branches=branches, total=total,
                   peak_bytes=measured.peak_bytes, note=captured.note, blocks=blocks, capture=captured,
                   measurement=measured)


def _costs(param_modules: Iterable[nn.Module], records: Iterable[LayerRecord]) -> dict[str, int]:
    """Params (with and without biases) held by ``param_modules``; MACs and saved bytes of ``records``."""
    counts = [param_counts(m) for m in param_modules]
    records = list(records)
    return {
        "params": sum(c[0] for c in counts), "params_no_bias": sum(c[1] for c in counts),
        "macs": sum(r.macs for r in records), "backward_macs": sum(r.backward_macs for r in records),
        "saved_bytes": sum(r.saved_bytes for r in records),
    }


def _module_rows(model: nn.Module, measured: Measurement) -> list[ModuleRow]:
    layers = measured.layers
    rows = []
    for name, module in model.named_modules():
        if not name or name not in layers:
            continue
        inside = [r for n, r in layers.items() if n == name or n.startswith(name + ".")]
        rows.append(ModuleRow(
            name=name, type=type(module).__name__, depth=name.count(".") + 1,
            output_shape=layers[name].output_shape, leaf=not list(module.children()),
            **_costs(module.modules(), inside),
        ))
    return rows


def _branch_rows(
    blocks: list[Block], captured: Capture, model: nn.Module, layers: dict[str, LayerRecord]
) -> list[BranchRow]:
    out = []
    nodes = {n.name: n for n in captured.graph_module.graph.nodes} if captured.graph_module is not None else {}
    for block in blocks:
        block_macs = sum(layers[m].macs for b in block.branches for m in b.modules if m in layers)
        for branch in block.branches:
            mods = [m for m in branch.modules if m in layers]
            last = nodes.get(branch.nodes[-1]) if branch.nodes else None
            meta = last.meta.get("tensor_meta") if last is not None else None
            shape = list(meta.shape) if meta is not None and hasattr(meta, "shape") else None
            costs = _costs((model.get_submodule(m) for m in mods), (layers[m] for m in mods))
            out.append(BranchRow(
                block=block.name, name=branch.name, modules=mods, output_shape=shape,
                macs_share=costs["macs"] / block_macs if block_macs else 0.0, **costs,
            ))
    return out


def render_summary(s: Summary, depth: int | None = None) -> str:
    """Modules nested to ``depth``, totals (also in torchsummary's convention), branches, measured memory."""
    t, ops = s.total, s.total["macs_by_operator"]
    head = f"{'Layer (type)':<46} {'Output shape':<20} {'Params':>12} {'No bias':>12} {'MACs':>9} {'Bwd MACs':>9} " \
           f"{'Saved':>11}"
    rule = "=" * len(head)
    lines = [f"{s.model}: input {shape_text([s.batch, *s.input_size])}, one training-mode forward+backward", rule, head,
             rule]
    for r in s.rows:
        if depth is not None and r.depth > depth:
            continue
        label = "  " * (r.depth - 1) + f"{r.name.split('.')[-1] if r.depth > 1 else r.name} ({r.type})"
        lines.append(f"{label:<46} {shape_text(r.output_shape):<20} {r.params:>12,} {r.params_no_bias:>12,} "
                     f"{fmt_count(r.macs):>9} {fmt_count(r.backward_macs):>9} {fmt_bytes(r.saved_bytes):>11}")
    lines += [
        rule,
        f"Total params: {t['params']:,} ({t['params_no_bias']:,} without biases)",
        f"Forward MACs: {fmt_count(t['forward_macs'])} ({t['forward_macs']:,}) = "
        + " + ".join(f"{k} {fmt_count(ops[k])}" for k in COUNTED if ops[k]),
        "  (aten level: functional calls and attention included; conv+linear+bias = torchinfo's Mult-Adds; "
        f"elementwise ops, {fmt_count(ops['elementwise'])}, not counted)",
        f"Layer MACs (the rows above): forward {fmt_count(t['macs'])} ({t['macs']:,}), backward "
        f"{fmt_count(t['backward_macs'])} ({t['backward_macs']:,})",
        f"Saved for backward (measured): {fmt_bytes(t['saved_bytes'])} ({t['saved_bytes']:,} bytes)",
        rule,
        "torchsummary convention (float32, leaf-layer outputs counted twice):",
        f"Input size (MB): {t['input_mb']:.2f}",
        f"Forward/backward pass size (MB): {t['forward_backward_mb']:.2f}",
        f"Params size (MB): {t['params_mb']:.2f}",
        f"Estimated Total Size (MB): {t['total_mb']:.2f}",
        rule,
    ]
    if s.branches:
        lines.append(f"{'Branch':<30} {'Output shape':<20} {'Params':>12} {'MACs':>9} {'Share':>7} {'Saved':>11}")
        block = None
        joins = {blk.name: blk for blk in s.blocks}
        for b in s.branches:
            if b.block != block:
                block = b.block
                info = joins.get(block)
                where = f": fork at node {info.fork}, join at node {info.join}" if info else ""
                lines.append(f"{block}{where}")
            lines.append(f"  {b.name:<28} {shape_text(b.output_shape):<20} {b.params:>12,} {fmt_count(b.macs):>9} "
                         f"{b.macs_share:>6.1%} {fmt_bytes(b.saved_bytes):>11}")
        lines.append(rule)
    if s.note:
        lines.append(f"Note: {s.note}")
    lines.append(f"Peak of the training step (measured, heap above start): {fmt_bytes(s.peak_bytes)}")
    return "\n".join(lines)


COMPARE_KEYS = (
    ("params", "Params", fmt_count), ("params_no_bias", "Params without bias", fmt_count),
    ("macs", "Forward MACs", fmt_count), ("backward_macs", "Backward MACs", fmt_count),
    ("saved_bytes", "Saved for backward", fmt_bytes), ("forward_backward_mb", "Fwd/bwd pass size (MB)", str),
)


@dataclass
class Comparison:
    """Two models' summaries side by side: each figure of A and of B, and B / A."""

    a: Summary
    b: Summary

    def rows(self) -> list[dict[str, Any]]:
        """One row per figure: A's value, B's, and B / A."""
        rows = []
        for key, label, _ in COMPARE_KEYS:
            va, vb = self.a.total[key], self.b.total[key]
            rows.append({"key": key, "label": label, "a": va, "b": vb, "ratio": (vb / va) if va else None})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.model, "b": self.b.model, "rows": self.rows()}

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        a, b = self.a, self.b
        head = f"{'':<26} {a.model:>20} {b.model:>20} {'B / A':>8}"
        where_a, where_b = shape_text([a.batch, *a.input_size]), shape_text([b.batch, *b.input_size])
        lines = [f"A = {a.model} at {where_a}; B = {b.model} at {where_b}", head, "-" * len(head)]
        formats = {key: f for key, _, f in COMPARE_KEYS}
        for row in self.rows():
            va, vb = (_compare_cell(row["key"], formats[row["key"]], row[side]) for side in ("a", "b"))
            ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "-"
            lines.append(f"{row['label']:<26} {va:>20} {vb:>20} {ratio:>8}")
        return "\n".join(lines)


def _compare_cell(key: str, f: Any, value: Any) -> str:
    """One figure as the comparison shows it: sizes in MB as they are, counts abbreviated with the full number."""
    if f is str:
        return f"{value:.2f}"
    return f(value) if key == "saved_bytes" else f"{f(value)} ({value:,})"
