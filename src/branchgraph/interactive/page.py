"""The report page: one self-contained HTML file (styles, script and data inline; nothing fetched when viewed)
that draws the graph as nested fork/join blocks, colours nodes by a chosen quantity with text that keeps a 4.5:1
contrast on every fill, shows a node's row on click, sorts the module table, and marks a plan's regions."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

COLLAPSE_NODES = 250  # past this many nodes, blocks start collapsed



def _asset(name: str) -> str:
    """The page's stylesheet or script, shipped beside this module."""
    return resources.files("branchgraph.interactive").joinpath(name).read_text(encoding="utf-8")


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.1f} MiB"


def _header(data: dict[str, Any]) -> str:
    total = data["total"]
    parts = [f"<h1>{html.escape(data['model'])}</h1>",
             f"<span>input {'x'.join(map(str, data['input']))}</span>",
             f"<span>{total.get('params', 0):,} parameters</span>",
             f"<span>{total.get('macs', 0):,} forward MACs per sample</span>",
             f"<span>measured step peak {_bytes(data['peak_bytes'])}</span>"]
    if data.get("hidden_shape_nodes"):
        parts.append(f"<span>{data['hidden_shape_nodes']} shape reads and checks not shown</span>")
    plan = data.get("plan")
    if plan:
        measured_kept = plan.get("measured_kept_bytes")
        parts.append(f"<span id='plan'>plan: {len(plan['regions'])} checkpointed regions, "
                     f"{len(plan['saving_ops'])} saving ops; kept {_bytes(plan['saved_bytes'])} predicted, "
                     f"{_bytes(measured_kept)} measured (plain {_bytes(plan['plain_saved_bytes'])}); peak "
                     f"{_bytes(plan['predicted_peak_bytes'])} predicted, {_bytes(plan.get('measured_peak_bytes'))} "
                     f"measured</span>")
    return "\n".join(parts)


def render_page(data: dict[str, Any]) -> str:
    """The whole HTML page for report ``data`` (``branchgraph.interactive.data``)."""
    payload = json.dumps({**data, "collapse_nodes": COLLAPSE_NODES}).replace("</", "<\\/")
    title = html.escape(f"{data['model']} — branchgraph report")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_asset('report.css')}</style></head>
<body>
<header>{_header(data)}
<label>colour by <select id="quantity"><option value="macs">forward MACs</option>
<option value="saved_bytes">bytes saved for backward</option>
<option value="time_ms">measured time</option></select></label>
<button id="expand" type="button">expand all</button><button id="collapse" type="button">collapse all</button>
<span id="legend" class="legend"></span></header>
<main><div id="graph" class="seq"></div>
<aside id="panel"><strong>Node</strong> (click one)<table id="row"></table></aside></main>
<h2 style="margin:0 16px;font-size:16px">Modules</h2>
<table id="modules"></table>
<script type="application/json" id="data">{payload}</script>
<script>{_asset('report.js')}</script>
</body></html>
"""
