"""``branchgraph report``: one self-contained interactive HTML page per model: the summary, the graph with
collapsible fork/join blocks coloured by a chosen quantity, a checkpoint plan's regions drawn on it, and each
block's branch gradient shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from branchgraph.choices import DEFAULTS
from branchgraph.errors import BranchgraphError, ConfigError


def write_report(model: nn.Module | str, input_size: tuple[int, ...] | None = None,
                 output: str | Path = "report.html", *, batch: int = DEFAULTS["report"]["batch"],
                 budget: float | int | str | None = None, peak: float | int | str | None = None,
                 branches: bool = False, seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> Path:
    """Write the report page of ``model`` to ``output``: measured at ``batch``; with ``budget``/``peak`` a
    checkpoint plan (``branchgraph.plan``) drawn on the graph with its predicted and measured kept bytes and
    peak; with ``branches`` each block's branch gradient shares (float64)."""
    import copy

    import torch

    from branchgraph.analysis.forks import fork_gradients
    from branchgraph.example import example_for
    from branchgraph.graph.tables import summary
    from branchgraph.interactive.data import branch_shares, node_times, plan_overlay, report_data
    from branchgraph.interactive.page import render_page
    from branchgraph.memory import compare_variants
    from branchgraph.memory.checkpointing import plan as plan_checkpointing
    from branchgraph.models.registry import resolve_model

    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"output {output} should end in .html: the report is one HTML page", param="output")
    name, module, size, classes = resolve_model(model, input_size, model_kwargs, seed)
    s = summary(module, size, batch, seed, name)
    if s.capture is None or s.capture.graph_module is None or s.measurement is None:
        raise BranchgraphError(f"cannot draw {name}: {s.note or 'no fx graph was captured'}")
    s.model = name
    example, _ = example_for(size, batch, seed, classes)
    data = report_data(s, node_times(s.capture.graph_module.eval(), example))
    if budget is not None or peak is not None:
        x, y = example_for(size, max(batch, 2), seed, classes)
        planned, plan = plan_checkpointing(module, x, budget, peak=peak)
        data["plan"] = plan_overlay(plan, data["nodes"])
        plain, measured = compare_variants({"plain": module, "planned": planned}, x, y)
        data["plan"] |= {"measured_kept_bytes": measured.forward_bytes, "measured_peak_bytes": measured.peak_bytes,
                         "plain_measured_kept_bytes": plain.forward_bytes}
    if branches:
        x64 = example_for(size, 2, seed, dtype=torch.float64)[0]
        data["branches"] = branch_shares(fork_gradients(copy.deepcopy(module).double(), x64, seed=seed))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render_page(data), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output} ({exc.strerror}): choose another output", param="output") from None
    return output
