"""Tuning by measurement: candidates per processor, the accuracy gate, the cache (hit, corrupt, unwritable),
the caller's model and RNG left alone, the trainer's "auto" precision, the CLI, and the roofline figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph import candidates as candidates_module
from branchgraph import hardware
from branchgraph import tune as tune_module
from branchgraph.errors import ConfigError
from branchgraph.models import create_model
from branchgraph.passes import optimize
from branchgraph.training import build_config
from branchgraph.training.distributed import DistInfo
from branchgraph.training.setup import tune_precision
from branchgraph.tune import CACHE_NAME, Candidate, candidates, tune
from branchgraph.tuning_cache import CACHE_FORMAT
from tests.conftest import run_cli
from tests.nets import TimmStyleInception, timm_style_data

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_is_a_candidate_only_where_native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: native)
    found, left_out = candidates(CPU, "train")
    precisions = {c.precision for c in found}
    assert precisions == ({"fp32", "bf16"} if native else {"fp32"})
    assert {c.channels_last for c in found} == {False, True}
    assert ("bf16" in left_out) is not native
    assert "fp16" in left_out  # CPU: fp16 autocast is emulated
    with pytest.raises(ConfigError, match="unknown precision bogus"):
        candidates(CPU, "train", precisions=("bogus",))
    forced, left_out = candidates(CPU, "train", precisions=("bf16", "fp16"))  # named: timed even where emulated
    assert {c.precision for c in forced} == {"bf16", "fp16"} and not left_out


def test_native_bf16_reads_the_processor_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.native_bf16("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not hardware.native_bf16("cpu")
    assert "bf16 emulated" in hardware.describe_text()


def test_pass_sets_drop_layout_and_precision_and_keep_parallel_last() -> None:
    found, _ = candidates(CPU, "eval", layouts=(True,), pass_sets=(("fold_bn", "layout", "precision", "parallel"),),
                          precisions=("fp32",), engines=("torch",))
    assert found == [Candidate("fp32", True, ("fold_bn", "parallel"))]
    assert found[0].pass_list() == ["fold_bn", "layout", "parallel"]
    assert Candidate("bf16", False, ("fold_bn",)).pass_list() == ["fold_bn", "precision"]


def test_tune_times_every_candidate_caches_and_leaves_the_model_alone(tuning_cache: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_module, "SIGN_SHARE", 0.0)  # a tiny model's rounds vary; not the point here
    torch.manual_seed(0)
    model = TimmStyleInception()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = timm_style_data()
    rng = torch.get_rng_state()
    result = tune(model, x, y, "train", rounds=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    found, _ = candidates(CPU, "train")
    assert set(result.median_s) | set(result.rejected) == {c.name for c in found}
    assert result.chosen.name == min(result.median_s, key=result.median_s.__getitem__)
    assert not result.cached and result.chosen.name in result.reason
    again = tune(model, x, y, "train", rounds=2)
    assert again.cached and again.chosen == result.chosen and again.median_s == pytest.approx(result.median_s)
    entries = json.loads((tuning_cache / CACHE_NAME).read_text())["entries"]
    entry = next(e for e in entries.values() if e["key"] == result.key)  # other tests share the session's cache
    assert entry["chosen"]["channels_last"] == result.chosen.channels_last
    key = entry["key"]
    assert key["input"] == [8, 1, 16, 16] and key["mode"] == "train" and key["torch"] == torch.__version__
    other = tune(model, x[:4], y[:4], "train", rounds=1)  # another input shape is another entry
    assert not other.cached


def test_accuracy_gate_rejects_reduced_precision_beyond_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: True)
    torch.manual_seed(0)
    x, y = timm_style_data(batch=4)
    result = tune(TimmStyleInception(), x, y, "eval", layouts=(False,), rounds=1, cache=False, tolerance=0.0,
                  engines=("torch",))
    assert set(result.rejected) == {"bf16 NCHW", "bf16 weights NCHW"}
    assert "off fp32" in result.rejected["bf16 NCHW"]
    assert result.chosen == Candidate("fp32", False)
    loose = tune(TimmStyleInception(), x, y, "eval", layouts=(False,), rounds=1, cache=False, engines=("torch",))
    assert set(loose.median_s) == {"fp32 NCHW", "bf16 NCHW", "bf16 weights NCHW"}  # within 0.1 of fp32's


def test_a_corrupt_cache_is_set_aside_and_rebuilt(tuning_cache: Path) -> None:
    path = tuning_cache / CACHE_NAME
    path.write_text('{"format": 1, "entries": ')
    torch.manual_seed(0)
    x, y = timm_style_data(batch=4)
    result = tune(TimmStyleInception(), x, y, "eval", rounds=1, engines=("torch",))
    assert not result.cached and any("unreadable" in n for n in result.notes)
    assert (tuning_cache / (CACHE_NAME + ".corrupt")).read_text() == '{"format": 1, "entries": '  # kept
    assert json.loads(path.read_text())["format"] == CACHE_FORMAT
    # an entry whose choice is not one of today's candidates is not trusted either
    entries = json.loads(path.read_text())["entries"]
    for entry in entries.values():
        entry["chosen"]["precision"] = "fp8"
    path.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}))
    assert not tune(TimmStyleInception(), x, y, "eval", rounds=1, engines=("torch",)).cached


def test_an_unwritable_cache_is_a_note_not_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BRANCHGRAPH_CACHE_DIR", str(blocker / "sub"))
    x, y = timm_style_data(batch=4)
    result = tune(TimmStyleInception(), x, y, "eval", rounds=1, engines=("torch",))
    assert any("could not write" in n for n in result.notes)


def test_tuned_optimised_candidate_is_verified_equal() -> None:
    """A pass-set candidate is built unverified for timing; what optimize --tune keeps is verified."""
    torch.manual_seed(0)
    model = bg.create_model("googlenet-fmnist", width=0.25)
    x, y = timm_style_data(batch=8, size=28)
    result = tune(model, x, y, "eval", pass_sets=((), ("prune", "fold_bn", "fuse_parallel", "inplace")), rounds=1,
                  engines=("torch",))
    assert result.chosen.passes is not None
    _, report = optimize(model, x[:2], passes=result.chosen.pass_list(), mode="eval")
    assert report.ok


def test_cli_optimize_and_bench_tune(tmp_path: Path) -> None:
    r = run_cli("optimize", "googlenet-fmnist", "--mode", "eval", "--tune", "--tune-batch", "8", "--engines", "torch",
                "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["verification"]["ok"] and data["tuning"]["chosen"]["passes"] is not None
    assert [p["name"] for p in data["passes"]] == Candidate(**{k: (tuple(v) if k == "passes" else v)
                                                              for k, v in data["tuning"]["chosen"].items()
                                                              if k != "name"}).pass_list()
    r = run_cli("bench", "googlenet-fmnist", "--batch", "4", "--rounds", "1", "--no-compile", "--tune", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["variants"]) == {"eager", "optimised", "tuned"}
    for variant in data["variants"].values():
        assert variant["gflops"] > 0 and variant["fraction_of_peak"] > 0
        assert variant["gflops"] == pytest.approx(data["gflop_per_call"] / variant["median_ms"] * 1000)
    assert data["peak_gflops"]["fp32"] > 0 and data["machine"]
    r = run_cli("bench", "googlenet-fmnist", "--batch", "4", "--rounds", "1", "--no-compile", "--tune")
    assert "roofline" in r.stdout and "tuned:" in r.stdout


def test_step_gflop_counts_forward_and_backward() -> None:
    from branchgraph.benchmark import step_gflop
    from branchgraph.graph import measure

    model = TimmStyleInception()
    x, _ = timm_style_data(batch=4)
    layers = measure(TimmStyleInception().train(), x[:1]).layers.values()
    macs, backward = sum(r.macs for r in layers), sum(r.backward_macs for r in layers)
    assert macs > 0 and backward > macs  # the weight and the input gradient each cost about a forward
    assert step_gflop(model, x, "eval") == pytest.approx(2 * 4 * macs / 1e9)
    assert step_gflop(model, x, "train") == pytest.approx(2 * 4 * (macs + backward) / 1e9)


def test_matmul_peak_is_a_rate() -> None:
    assert hardware.matmul_peak(torch.float32, size=128, rounds=2) > 0.01


def test_a_forced_precision_is_trained_where_it_is_emulated(monkeypatch: pytest.MonkeyPatch,
                                                            tuning_cache: Path) -> None:
    """``--precision bf16`` on a CPU without native bf16 times only the layout in bf16, not refused."""
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: False)
    config = build_config("fast", overrides={"precision": "bf16", "batch_size": 4, "model_kwargs": {"width": 0.25}})
    model = create_model("googlenet-fmnist", width=0.25)
    tuning, resolved = tune_precision(model, config, torch.device("cpu"), DistInfo())
    assert resolved.precision == "bf16" and isinstance(resolved.channels_last, bool)
    assert sorted(tuning["median_ms"]) == ["bf16 NCHW", "bf16 channels_last"] and not tuning["left_out"]
    with pytest.raises(ConfigError, match=r"too far from fp32.*use fp32 or auto"):
        tune(model, torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), precisions=("bf16",),
             tolerance=0.0, cache=False)
