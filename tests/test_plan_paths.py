"""The memory planner has one path: the CLI's ``memory`` is ``branchgraph.plan``; a plan whose predicted peak is
above the plain step's says so."""

from __future__ import annotations

import dataclasses
import json

import branchgraph as bg
from branchgraph.memory.checkpoint_plan import PEAK_ABOVE_PLAIN
from tests.conftest import run_cli

FIXTURES = "tests/nets.py"


def test_api_and_cli_give_the_same_plan() -> None:
    """Same model, budget, batch and seed: the same regions, bytes and prediction (MAC cost: timings would make
    two runs of either differ)."""
    _, planned = bg.plan(f"{FIXTURES}:VitLike", (3, 16, 16), 0.25, batch=4, cost="macs")
    r = run_cli("memory", f"{FIXTURES}:VitLike", "--input", "3,16,16", "--batch", "4", "--budget", "0.25",
                "--cost", "macs", "--json")
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)["plan"]
    assert [region["name"] for region in cli["regions"]] == [region.name for region in planned.regions]
    assert planned.regions and cli["saved_bytes"] == planned.saved_bytes
    assert cli["predicted_peak_bytes"] == planned.predicted_peak_bytes
    assert cli["peak_above_plain"] == planned.peak_above_plain


def test_a_plan_predicted_above_the_plain_peak_says_so() -> None:
    _, planned = bg.plan(f"{FIXTURES}:VitLike", (3, 16, 16), 0.25, batch=4, cost="macs", measure=False)
    assert PEAK_ABOVE_PLAIN not in planned.to_text() or planned.peak_above_plain
    above = dataclasses.replace(planned, predicted_peak_bytes=planned.plain_peak_bytes + 1)
    assert above.peak_above_plain and above.to_dict()["peak_above_plain"]
    assert f"warning: {PEAK_ABOVE_PLAIN}" in above.to_text()


def test_layers_called_with_a_list_the_caller_appends_to_get_a_plan_that_runs() -> None:
    """DenseNet's ``layer(features)``: recomputing a layer in backward must see the list as it was at the call
    (refused before: "running_mean should contain 48 elements not 40"). fx cannot trace this net, so the regions
    are modules."""
    _, planned = bg.plan(f"{FIXTURES}:ShapeBranchingDenseNet", (3, 8, 8), 0.3, batch=4, cost="macs")
    assert planned.method == "modules" and [r.name for r in planned.regions][:2] == ["layers.0", "layers.1"]
    assert planned.grad_change is not None and planned.grad_change <= 1e-9
    assert planned.saved_bytes <= planned.budget_bytes
