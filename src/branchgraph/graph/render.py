"""Text rendering of summaries and comparisons (tables under golden-file tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from branchgraph.graph.summary import Summary


def fmt_count(n: float) -> str:
    """12345678 -> '12.35M'; small numbers as they are."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units: '782.02 MiB'."""
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _shape(shape: list[int] | None) -> str:
    return "[" + ", ".join(map(str, shape)) + "]" if shape else "-"


def render_summary(s: Summary, depth: int | None = None) -> str:
    """Modules nested to ``depth``, totals (also in torchsummary's convention), branches, measured memory."""
    t = s.total
    head = f"{'Layer (type)':<46} {'Output shape':<20} {'Params':>12} {'No bias':>12} {'MACs':>9} {'Bwd MACs':>9} " \
           f"{'Saved':>11}"
    rule = "=" * len(head)
    lines = [f"{s.model}: input {_shape([s.batch, *s.input_size])}, one training-mode forward+backward", rule, head,
             rule]
    for r in s.rows:
        if depth is not None and r.depth > depth:
            continue
        label = "  " * (r.depth - 1) + f"{r.name.split('.')[-1] if r.depth > 1 else r.name} ({r.type})"
        lines.append(f"{label:<46} {_shape(r.output_shape):<20} {r.params:>12,} {r.params_no_bias:>12,} "
                     f"{fmt_count(r.macs):>9} {fmt_count(r.backward_macs):>9} {fmt_bytes(r.saved_bytes):>11}")
    lines += [
        rule,
        f"Total params: {t['params']:,} ({t['params_no_bias']:,} without biases)",
        f"Forward MACs: {fmt_count(t['macs'])} ({t['macs']:,}); backward MACs: {fmt_count(t['backward_macs'])} "
        f"({t['backward_macs']:,})",
        f"Saved for backward (measured): {fmt_bytes(t['saved_bytes'])} ({t['saved_bytes']:,} bytes)",
        "Forward MACs by operator (aten level, functional calls included; conv+linear+bias = torchinfo's "
        "Mult-Adds): " + ", ".join(f"{k} {fmt_count(v)}" for k, v in t["macs_by_operator"].items()),
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
            lines.append(f"  {b.name:<28} {_shape(b.output_shape):<20} {b.params:>12,} {fmt_count(b.macs):>9} "
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


def compare_rows(a: Summary, b: Summary) -> list[dict[str, Any]]:
    """One row per figure: A's value, B's, and B / A."""
    rows = []
    for key, label, _ in COMPARE_KEYS:
        va, vb = a.total[key], b.total[key]
        rows.append({"key": key, "label": label, "a": va, "b": vb, "ratio": (vb / va) if va else None})
    return rows


def render_compare(a: Summary, b: Summary) -> str:
    """Two models side by side with B / A ratios."""
    head = f"{'':<26} {a.model:>20} {b.model:>20} {'B / A':>8}"
    where_a, where_b = _shape([a.batch, *a.input_size]), _shape([b.batch, *b.input_size])
    lines = [f"A = {a.model} at {where_a}; B = {b.model} at {where_b}", head, "-" * len(head)]
    formats = {key: f for key, _, f in COMPARE_KEYS}
    for row in compare_rows(a, b):
        f = formats[row["key"]]
        va = f"{row['a']:.2f}" if f is str else f"{f(row['a'])} ({row['a']:,})" if row["key"] != "saved_bytes" \
            else f(row["a"])
        vb = f"{row['b']:.2f}" if f is str else f"{f(row['b'])} ({row['b']:,})" if row["key"] != "saved_bytes" \
            else f(row["b"])
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "-"
        lines.append(f"{row['label']:<26} {va:>20} {vb:>20} {ratio:>8}")
    return "\n".join(lines)
