"""Budgeted checkpointing and reversible networks: budgets hold (predicted and measured), gradients, dropout
masks and BatchNorm statistics equal the plain model's, RevNet memory is flat in depth."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph.errors import ConfigError
from branchgraph.memory import parse_budget, plan, remove_plan, step_memory
from branchgraph.models import model_info
from tests.conftest import REPEATS, assert_kept_as_predicted, run_cli
from tests.nets import model_input, small_size


def _example(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    return model_input(name, batch, seed, size=small_size(name))




# revnet164 and revinception-fmnist (12-14 s each) plan in the slow suite; revnet38 exercises reversible stages
# and the googlenet nets Inception blocks here.
@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.slow if m in ("revnet164", "revinception-fmnist") else ())
    for m in bg.list_models()])
def test_plan_respects_its_budget_on_every_model(name: str) -> None:
    """Predicted saved bytes fit the budget, and the bytes the plan saves agree with the allocator's figures
    (heap left after the forward, planned against plain) within 3 % of the plain activations and 32 KiB per
    region (each checkpoint keeps the RNG state and its records), plus the model's output (alive while the
    caller holds it, saved or not). Differences cancel what both runs hold besides activations, such as
    autograd's graph nodes, which are a quarter of the heap at these tiny test inputs."""
    model = bg.create_model(name)
    x = _example(name, 1 if name == "vgg16" else 2)
    planned, p = plan(model, x, 0.5, measure=False)
    assert p.saved_bytes <= p.budget_bytes == int(0.5 * p.plain_saved_bytes)
    assert p.regions or p.saving_ops, "a budget of half the activations needs a region or a saving op"
    if name in REPEATS:
        return  # its layers are another model's, measured below under that model's name
    assert_kept_as_predicted(model, planned, p, x)
    assert planned.state_dict().keys() == model.state_dict().keys()




def test_lower_budgets_recompute_more_down_to_the_whole_model() -> None:
    model, x = bg.create_model("googlenet-d2l"), _example("googlenet-d2l", 2)
    plans = [plan(model, x, b, cost="macs", measure=False)[1] for b in (1.0, 0.5, 0.25, 0.1, 1000)]
    assert plans[0].regions == [] and plans[0].extra_macs == 0
    assert [p.saved_bytes <= p.budget_bytes for p in plans] == [True] * 5
    assert plans[1].extra_macs <= plans[2].extra_macs <= plans[3].extra_macs <= plans[4].extra_macs
    assert plans[4].extra_macs == plans[4].forward_macs  # 1000 bytes: only the input may stay, all is recomputed


def _assert_same_gradients(reference: nn.Module, other: nn.Module, rtol: float, atol: float) -> None:
    for (key, a), b in zip(reference.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=rtol, atol=atol, msg=key)


def _step(net: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inp = x.clone().requires_grad_(True)
    out = net(inp)
    logits = out.logits if hasattr(out, "logits") else out
    (logits * weights).sum().backward()
    return logits.detach(), inp.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("name", "budget"), [("googlenet-fmnist", 0.25), ("googlenet", 0.1),
                                              ("googlenet-d2l-bn", 0.25)])
def test_checkpointed_training_equals_plain(name: str, budget: float, seed: int) -> None:
    """float64: outputs, input and parameter gradients agree to 1e-10; dropout masks replay (googlenet has
    dropout); BatchNorm running statistics and batch counters are updated once, bit for bit."""
    torch.manual_seed(seed)
    model = bg.create_model(name).double().train()
    x = _example(name, 3, seed).double()
    planned, p = plan(model, x, budget, measure=False)
    assert p.regions
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) or name == "googlenet"
    weights = torch.randn(3, model_info(name).num_classes or 1, dtype=torch.float64)
    torch.manual_seed(seed + 100)
    out_plain, grad_plain = _step(model, x, weights)
    torch.manual_seed(seed + 100)
    out_planned, grad_planned = _step(planned, x, weights)
    torch.testing.assert_close(out_planned, out_plain, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_planned, grad_plain, rtol=1e-10, atol=1e-12)
    _assert_same_gradients(model, planned, rtol=1e-10, atol=1e-12)
    for (key, a), b in zip(model.named_buffers(), planned.buffers(), strict=True):
        assert torch.equal(a, b), f"{key} differs: running statistics updated other than once"


def test_without_the_statistics_guard_batchnorm_would_update_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is what keeps the statistics equal: with a no-op recompute context they drift."""
    import contextlib

    from branchgraph.memory import runtime as graph_runtime

    monkeypatch.setattr(graph_runtime, "_recompute", lambda modules: contextlib.nullcontext())
    model = bg.create_model("googlenet-fmnist").double().train()
    x = _example("googlenet-fmnist", 3).double()
    planned, _ = plan(model, x, 0.25)
    weights = torch.randn(3, 10, dtype=torch.float64)
    _step(model, x, weights)
    _step(planned, x, weights)
    counts = [(a, b) for (k, a), b in zip(model.named_buffers(), planned.buffers(), strict=True)
              if k.endswith("num_batches_tracked")]
    assert any(int(b) == 2 * int(a) for a, b in counts)


def test_plan_leaves_the_callers_model_and_rng_alone() -> None:
    model = bg.create_model("googlenet")
    before = copy.deepcopy(model.state_dict())
    x = _example("googlenet", 2)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    planned, _ = plan(model, x, 0.5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model) is type(remove_plan(planned))
    pickle.dumps(planned)


@pytest.mark.parametrize(("text", "value"), [("0.1", 0.1), ("1", 1.0), ("300MiB", 300 * 2**20), ("2G", 2 * 2**30),
                                             ("5000000", 5_000_000)])
def test_parse_budget(text: str, value: float) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "abc", "3 parsecs"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_budget(text)


def test_cli_memory_json_and_bad_budget() -> None:
    r = run_cli("memory", "googlenet-fmnist", "--budget", "0.25", "--batch", "4", "--measure", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["plan"]["saved_bytes"] <= data["plan"]["budget_bytes"]
    assert data["measured"][1]["forward_vs_plain"] < 0.3
    r = run_cli("memory", "googlenet-fmnist", "--budget", "lots")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "memory budget 'lots'" in r.stderr


# Reversible networks


def _twins(name: str, units: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    rev = bg.create_model(name, units=units) if name.startswith("revnet") else bg.create_model(name)
    plain_kwargs = {"units": units, "reversible": False} if name.startswith("revnet") else {}
    plain_name = name if name.startswith("revnet") else f"{name}-plain"
    plain = bg.create_model(plain_name, **plain_kwargs)
    plain.load_state_dict(rev.state_dict())
    return rev, plain


@pytest.mark.parametrize(("name", "units", "seed"), [("revnet38", 2, 0), ("revnet38", 2, 1), ("revnet38", 2, 2),
                                                     ("revnet164", 1, 0), ("revinception-fmnist", 0, 0),
                                                     ("revinception-fmnist", 0, 1)])
def test_reversible_nets_train_like_their_stored_twins(name: str, units: int, seed: int) -> None:
    """float64: outputs, input and parameter gradients agree to 1e-8, BatchNorm buffers once (atol 1e-12)."""
    rev, plain = _twins(name, units)
    rev, plain = rev.double().train(), plain.double().train()
    c, h, w = model_info(name).input_size
    torch.manual_seed(seed)
    x = torch.randn(3, c, h // 2, w // 2, dtype=torch.float64)
    weights = torch.randn(3, 10, dtype=torch.float64)
    out_plain, grad_plain = _step(plain, x, weights)
    out_rev, grad_rev = _step(rev, x, weights)
    torch.testing.assert_close(out_rev, out_plain, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_rev, grad_plain, rtol=1e-8, atol=1e-10)
    _assert_same_gradients(plain, rev, rtol=1e-8, atol=1e-10)
    for (key, a), b in zip(plain.named_buffers(), rev.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=f"{key} updated other than once")


def test_revnet_memory_is_flat_in_depth_and_resnet_is_not() -> None:
    x = torch.randn(8, 3, 32, 32)
    kept = {}
    for units in (2, 6):
        torch.manual_seed(0)
        kept["rev", units] = step_memory(bg.create_model("revnet38", units=units), x).forward_bytes
        kept["res", units] = step_memory(bg.create_model("resnet32", units=2 * units), x).forward_bytes
    assert kept["rev", 6] <= 1.05 * kept["rev", 2]
    assert kept["res", 6] > 2.5 * kept["res", 2]


@pytest.mark.parametrize(("name", "millions"), [("resnet32", 0.46), ("revnet38", 0.46), ("resnet110", 1.73),
                                                ("revnet110", 1.73), ("resnet164", 1.70), ("revnet164", 1.75)])
def test_twins_match_the_revnet_papers_parameter_counts(name: str, millions: float) -> None:
    params = sum(p.numel() for p in bg.create_model(name).parameters())
    assert abs(params / 1e6 - millions) / millions < 0.06, params


def test_training_under_a_memory_budget_equals_plain_training(tmp_path, data_dir) -> None:
    """The same run with and without --memory-budget: recomputation replays the same kernels on the same
    inputs, so losses and accuracies agree (to float32 summation noise), and the plan is saved in the run."""
    finals = []
    for extra in ([], ["--memory-budget", "0.25"]):
        r = run_cli("train", "--model", "googlenet-fmnist", "--epochs", "1", "--limit", "640", "--batch-size", "64",
                    "--out-dir", str(tmp_path), "--quiet", "--json", *extra)
        assert r.returncode == 0, r.stderr
        finals.append(json.loads(r.stdout))
    plain, planned = (f["final"] for f in finals)
    for key in ("train_loss", "val_loss", "val_acc", "test_acc"):
        assert planned[key] == pytest.approx(plain[key], rel=1e-5), key
    saved = json.loads((Path(finals[1]["run_dir"]) / "memory_plan.json").read_text())
    assert saved["regions"] and saved["saved_bytes"] <= saved["budget_bytes"]


def test_train_rejects_a_bad_memory_budget(tmp_path) -> None:
    r = run_cli("train", "--memory-budget", "-3", "--out-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "memory budget" in r.stderr


def test_compare_variants_reports_paired_per_round_ratios_and_kept_bytes() -> None:
    """Plain against a checkpointed copy: kept bytes measured per variant, the step-time ratio the median of the
    per-round ratios (not a ratio of medians) and their range; the reference's own ratio is exactly 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    planned, _ = plan(net, x, 0.3, measure=False)
    results = bg.memory.compare_variants({"plain": net, "planned": planned}, x, y, rounds=3)
    plain, other = results
    assert other.forward_bytes < plain.forward_bytes and len(other.times_s or []) == 3
    d = other.to_dict(plain)
    ratios = sorted(t / r for t, r in zip(other.times_s or [], plain.times_s or [], strict=True))
    assert d["time_vs_plain"] == pytest.approx(ratios[1]) and d["time_vs_plain_range"] == [ratios[0], ratios[2]]
    assert plain.to_dict(plain)["time_vs_plain"] == 1.0 and d["forward_vs_plain"] < 1
    assert "planned" in bg.memory.table(results) and "x" in bg.memory.table(results)
