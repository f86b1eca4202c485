"""Inference engines in the tuner and in ``bench --peers``: which candidates exist where, every engine verified
against fp32 eager before it can win, measurements whose rounds disagree neither trusted nor cached, and the
deployable result written, loaded back and refused in one line when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph import benchmark
from branchgraph import candidates as candidates_module
from branchgraph import tune as tune_module
from branchgraph.errors import ConfigError
from branchgraph.inference import load, runtimes
from branchgraph.tune import Candidate, candidates, tune
from branchgraph.tuning_cache import CACHE_NAME
from tests.conftest import run_cli
from tests.nets import TimmStyleInception, timm_style_data

CPU = torch.device("cpu")
RUNTIMES_INSTALLED = runtimes.available("onnxruntime") and runtimes.available("openvino")
needs_runtimes = pytest.mark.skipif(not RUNTIMES_INSTALLED, reason="pip install 'branchgraph[runtimes]'")


def test_inference_candidates_add_weights_compiled_and_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(candidates_module, "available", lambda runtime: True)
    names = {c.name for c in candidates(CPU, "eval")[0]}
    assert {"bf16 weights NCHW", "bf16 weights channels_last", "fp32 NCHW, compiled (frozen)",
            "bf16 weights channels_last, compiled (frozen)", "onnxruntime fp32", "openvino fp32",
            "openvino bf16"} <= names
    assert all(c.engine == "torch" and not c.weights for c in candidates(CPU, "train")[0])
    assert Candidate("bf16", True, weights=True).autocast is None  # cast weights run without autocast
    with pytest.raises(ConfigError, match="inference only"):
        candidates(CPU, "train", engines=("openvino",))
    with pytest.raises(ConfigError, match="unknown engine tensorrt"):
        candidates(CPU, "eval", engines=("tensorrt",))
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: False)
    names = {c.name for c in candidates(CPU, "eval")[0]}
    assert "openvino bf16" not in names and not any("weights" in n for n in names)  # no native bf16: fp32 only
    monkeypatch.setattr(candidates_module, "available", lambda runtime: False)
    found, left_out = candidates(CPU, "eval", engines=("torch", "onnxruntime", "openvino"))
    assert left_out["onnxruntime"] == left_out["openvino"] == "not installed: pip install 'branchgraph[runtimes]'"
    assert all(c.engine == "torch" for c in found)


def _in_child(check: object, *args: object) -> None:
    """Run ``check(*args)`` in a fresh (spawned) process and re-raise its failure here. OpenVINO stays out of the
    test workers: once it has compiled and saved models in a process, a later SIGINT there (the trainer's Ctrl-C
    test) ended in a segmentation fault."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check, args)


@needs_runtimes
def test_runtime_candidates_are_verified_then_timed() -> None:
    _in_child(_runtime_candidates_are_verified_then_timed)


def _runtime_candidates_are_verified_then_timed() -> None:
    torch.manual_seed(0)
    x, _ = timm_style_data(batch=4)
    result = tune(TimmStyleInception().eval(), x, None, "eval", engines=("torch", "onnxruntime", "openvino"),
                  rounds=1, cache=False)
    assert {"onnxruntime fp32", "openvino fp32"} <= set(result.median_s)
    assert result.errors["onnxruntime fp32"] < 1e-5 and result.errors["openvino fp32"] < 1e-5
    assert result.chosen.name == min(result.median_s, key=result.median_s.__getitem__)
    assert "openvino fp32" in result.to_text() and "error" in result.to_text()


@needs_runtimes
def test_an_engine_with_wrong_outputs_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = runtimes.OnnxRuntimeModule.forward
    monkeypatch.setattr(runtimes.OnnxRuntimeModule, "forward", lambda self, x: forward(self, x) + 1.0)
    torch.manual_seed(0)
    x, _ = timm_style_data(batch=4)
    result = tune(TimmStyleInception().eval(), x, None, "eval", engines=("torch", "onnxruntime"), rounds=1,
                  cache=False)
    assert "onnxruntime fp32" not in result.median_s
    assert "off fp32 normwise" in result.rejected["onnxruntime fp32"]


def test_rounds_that_disagree_are_measured_again_and_not_cached(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds that swap which candidate is faster leave the choice in doubt: measured again, then not cached. A
    machine-wide slowdown (one round 3x slower for every candidate) leaves the order as it was: cached."""
    monkeypatch.setenv("BRANCHGRAPH_CACHE_DIR", str(tmp_path))  # a cache of its own: others tune this net too
    calls: list[int] = []
    busy_rounds = {"value": True}

    def fake_times(runs: dict, rounds: int, warmup: int = 1, settle_s: float = 0.0) -> dict[str, list[float]]:
        calls.append(rounds)
        if busy_rounds["value"]:  # the first wins the even rounds by 2x, loses the odd ones by 5x
            pattern = [[0.01, 0.05][r % 2] for r in range(rounds)], [[0.02, 0.01][r % 2] for r in range(rounds)]
            return {name: pattern[i] if i < 2 else [0.1] * rounds for i, name in enumerate(runs)}
        return {name: [0.01 * (i + 1)] * (rounds - 1) + [0.03 * (i + 1)] for i, name in enumerate(runs)}

    monkeypatch.setattr(tune_module, "interleaved_times", fake_times)
    torch.manual_seed(0)
    x, y = timm_style_data(batch=2)
    model = TimmStyleInception()
    busy = tune(model, x, y, "train", rounds=3)
    assert calls == [3, 6] and not busy.cached
    assert any("not cached" in n and "in only 3 of 6 interleaved rounds" in n for n in busy.notes), busy.notes
    assert not tune(model, x, y, "train", rounds=3).cached  # nothing was written
    busy_rounds["value"] = False
    calls.clear()
    quiet = tune(model, x, y, "train", rounds=3)
    assert calls == [3] and not quiet.cached and quiet.spread[quiet.chosen.name] == pytest.approx(2.0)
    again = tune(model, x, y, "train", rounds=3)
    assert again.cached and "cached, measured " + quiet.measured_at in again.reason and "--retune" in again.reason
    assert again.spread == pytest.approx(quiet.spread)
    calls.clear()
    assert not tune(model, x, y, "train", rounds=3, retune=True).cached and calls == [3]


def test_a_run_too_short_to_repay_timing_takes_the_first_candidate_unmeasured(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRANCHGRAPH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune_module, "interleaved_times", lambda *a, **k: pytest.fail("timed a short run"))
    x, y = timm_style_data(batch=2)
    short = tune(TimmStyleInception(), x, y, "train", rounds=3, serves=20)
    assert not short.median_s and short.chosen.name == "fp32 NCHW"
    assert short.reason.startswith("fp32 NCHW: untimed: this run's 20 steps are too few to repay timing")


def test_an_older_cache_is_measured_again(tuning_cache: Path) -> None:
    path, aside = tuning_cache / CACHE_NAME, tuning_cache / (CACHE_NAME + ".corrupt")
    aside.unlink(missing_ok=True)  # another test of this session may have set a damaged cache aside
    path.write_text(json.dumps({"format": 1, "entries": {}}))
    torch.manual_seed(0)
    x, y = timm_style_data(batch=2)
    result = tune(TimmStyleInception(), x, y, "train", rounds=1)
    assert any("older branchgraph" in n for n in result.notes)
    assert not aside.exists()  # not set aside as damaged


@pytest.mark.parametrize("engine", ["torch", pytest.param("onnxruntime", marks=needs_runtimes),
                                    pytest.param("openvino", marks=needs_runtimes)])
def test_the_tuned_choice_is_a_module_and_deploys(tmp_path: Path, engine: str) -> None:
    if engine == "openvino":
        _in_child(_tuned_choice_deploys, tmp_path, engine)
    else:
        _tuned_choice_deploys(tmp_path, engine)


def _tuned_choice_deploys(tmp_path: Path, engine: str) -> None:
    torch.manual_seed(0)
    model = TimmStyleInception().eval()
    x = torch.randn(3, 1, 16, 16)
    out = tmp_path / "deployed"
    net, report = bg.optimize(model, (1, 16, 16), tune=True, tune_batch=4, engines=(engine,), out=out, cache=False,
                              rounds=1)
    assert report.tuning.chosen.engine == engine
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(net(x), expected, rtol=1e-4, atol=1e-4) or report.tuning.chosen.precision != "fp32"
        loaded = load(out)(x)
    record = json.loads((out / "record.json").read_text())
    assert record["engine"] == engine and all((out / f).exists() for f in record["files"])
    limit = record["verification"]["limit"]
    assert record["verification"]["output_error_normwise"] <= limit
    assert ((loaded - expected).norm() / expected.norm()).item() <= limit  # another batch size than written


def test_load_refuses_damaged_directories_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no record\.json"):
        load(tmp_path)
    (tmp_path / "record.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path)
    (tmp_path / "record.json").write_text(json.dumps({"engine": "torch"}))
    with pytest.raises(ConfigError, match=r"lacks model\.pt2"):
        load(tmp_path)
    (tmp_path / "model.pt2").write_bytes(b"not a program")
    with pytest.raises(ConfigError, match=r"not a torch\.export archive"):
        load(tmp_path)


def test_peers_without_runtimes_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "available", lambda runtime: False)
    monkeypatch.setattr(benchmark, "available", lambda runtime: False)
    torch.manual_seed(0)
    result = benchmark.bench(TimmStyleInception(), "eval", 2, (1, 16, 16), rounds=1, compile=False, peers=True)
    assert result.notes == ["onnxruntime and openvino not installed: pip install 'branchgraph[runtimes]' to compare "
                            "them", "compiled (frozen) left out: compile is off"]
    assert not any("onnxruntime" in v or "openvino" in v or "compiled" in v for v in result.median_s)
    with pytest.raises(ConfigError, match="peers compares inference engines"):
        benchmark.bench(TimmStyleInception(), "train", 2, (1, 16, 16), rounds=1, compile=False, peers=True)


@needs_runtimes
def test_cli_out_and_peers(tmp_path: Path) -> None:
    out = tmp_path / "served"
    r = run_cli("optimize", "googlenet-fmnist", "--mode", "eval", "--tune", "--tune-batch", "4", "--engines",
                "onnxruntime,openvino", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["deployed"] == str(out / "record.json") and data["tuning"]["chosen"]["engine"] in ("onnxruntime",
                                                                                                   "openvino")
    r = run_cli("optimize", "googlenet-fmnist", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out writes the tuned inference model" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_cli("bench", "googlenet-fmnist", "--batch", "2", "--rounds", "1", "--no-compile", "--peers", "--json")
    assert r.returncode == 0, r.stderr
    variants = json.loads(r.stdout)["variants"]
    assert {"onnxruntime fp32", "openvino fp32"} <= set(variants)
    assert variants["onnxruntime fp32"]["output_error"] < 1e-4 and variants["openvino fp32"]["gflops"] > 0
    r = run_cli("bench", "googlenet-fmnist", "--mode", "train", "--peers")
    assert r.returncode == 2 and "--peers compares inference engines" in r.stderr


@pytest.mark.slow
def test_frozen_compile_is_verified_and_bounded_by_the_budget() -> None:
    torch.manual_seed(0)
    x, _ = timm_style_data(batch=4)
    model = TimmStyleInception().eval()
    result = tune(model, x, None, "eval", engines=("torch", "compiled"), precisions=("fp32",), rounds=1, cache=False)
    frozen = "fp32 NCHW, compiled (frozen)"
    assert frozen in result.median_s and result.errors[frozen] < 1e-4 and result.compile_s[frozen] > 0
    strict = tune(model, x, None, "eval", engines=("torch", "compiled"), precisions=("fp32",), rounds=1, cache=False,
                  compile_budget=1e-3)
    assert "over the budget of 0.001 s" in strict.left_out[frozen]


def test_interleaved_rounds_shuffle_and_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round runs the variants in its own seeded order; with ``settle_s`` every timed call follows untimed
    calls of the same variant lasting at least that long (the clock here advances 1 ms per call)."""
    from branchgraph import timing

    clock = {"now": 0.0}
    calls: list[str] = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])

    def variant(name: str):
        def run() -> None:
            calls.append(name)
            clock["now"] += 0.001
        return run

    runs = {name: variant(name) for name in "abc"}
    times = timing.interleaved_times(runs, rounds=3, warmup=0)
    rounds = [calls[i:i + 3] for i in range(0, 9, 3)]
    assert all(sorted(r) == list("abc") for r in rounds) and len({"".join(r) for r in rounds}) > 1
    assert all(t == [pytest.approx(0.001)] * 3 for t in times.values())
    calls.clear()
    timing.interleaved_times(runs, rounds=1, warmup=0, settle_s=0.003)
    assert sorted(calls) == list("aaaabbbbcccc") and calls[:4] == [calls[0]] * 4  # 3 ms of settling, then timed
