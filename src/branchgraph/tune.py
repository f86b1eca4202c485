"""Precision, memory layout and pass set chosen by measurement: each candidate is timed interleaved in one
process on the real model and batch, the fastest whose outputs stay within tolerance wins, and the choice is
cached per (processor, torch, model, input shape, mode) in the user's cache directory."""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.candidates import DTYPES, ENGINES, RUNTIME_ENGINES, Candidate, candidates, usable_precisions
from branchgraph.choices import COMPILE_BUDGET_S, Mode
from branchgraph.errors import ConfigError
from branchgraph.hardware import cpu_capability, cpu_model
from branchgraph.heap import keeping
from branchgraph.inference.engines import Built, Serving, export_for_runtimes
from branchgraph.inference.int8 import Calibration
from branchgraph.inference.pt2e import FrozenCompiled, quantize_pt2e
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule
from branchgraph.kernels import to_channels_last
from branchgraph.passes.base import check_mode
from branchgraph.passes.pipeline import optimize
from branchgraph.passes.verification import REDUCED_PRECISION_TOLERANCE
from branchgraph.timing import interleaved_times, make_runner
from branchgraph.tune_checks import Checks
from branchgraph.tune_result import TunedReport, TuneResult
from branchgraph.tuning_cache import CACHE_NAME, cache_dir, load_cache, update_cache

# Rounds of one candidate may differ by this share of their median before the measurement counts as disturbed (another
# job on the cores): it is measured again with twice the rounds, and not cached if the rounds still disagree.
TIE = 0.05  # candidates whose paired-round ratio is within 5 % of 1 are as fast: either choice is right
SIGN_SHARE = 0.75  # else the fastest must win this share of the interleaved rounds against each other candidate
REPAY_SHARE = 0.1  # timing may take at most this share of the training steps its choice serves
# Untimed calls of a candidate before each timed one when engines with thread pools of their own are compared
# (branchgraph.timing.interleaved_times): 3 ms of settling took OpenVINO at batch 1 from 4.2 to 1.9 ms.
SETTLE_S = 0.01
__all__ = ["CACHE_NAME", "DTYPES", "ENGINES", "RUNTIME_ENGINES", "Candidate", "TuneResult", "TunedReport",
           "build_candidate", "cache_dir", "candidates", "serving_module", "tune", "usable_precisions"]


def _model_id(model: nn.Module) -> str:
    """The model's class and a hash of its printed structure and parameter shapes (same net, same id)."""
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    digest = hashlib.sha256((repr(model) + shapes).encode()).hexdigest()[:16]
    return f"{type(model).__module__}.{type(model).__qualname__}:{digest}"


def build_candidate(
    model: nn.Module, example: torch.Tensor, mode: str, cand: Candidate, onnx_path: Path | None = None,
    calibration: Calibration | None = None,
) -> Built:
    """The network for ``cand`` and the input it takes (eager: a copy in the candidate's layout, run it under
    ``cand.autocast``; with passes: ``optimize``, unverified, since the caller verifies what it keeps; other
    engines: ``_build_engine``, compiled here; int8 calibrated on ``calibration``'s images)."""
    x = example.contiguous(memory_format=torch.channels_last) if cand.channels_last and example.dim() == 4 \
        else example
    if cand.engine != "torch" or cand.weights:
        return _build_engine(model, example, cand, onnx_path, calibration)
    if cand.passes is None:
        net = copy.deepcopy(model).train(mode == "train")
        return Built(to_channels_last(net) if cand.channels_last else net, x)
    net, _ = optimize(model, example[:2], passes=cand.pass_list(), mode=mode, verify=False)
    return Built(net, x)


def serving_module(model: nn.Module, example: torch.Tensor, mode: str, cand: Candidate,
                   calibration: Calibration | None = None) -> nn.Module:
    """``cand`` as the module a user calls, fp32 in and fp32 out: its built network (``build_candidate``), an eager
    one behind ``Serving`` with the layout and autocast the timings used."""
    net = build_candidate(model, example, mode, cand, calibration=calibration).net
    eager = cand.engine == "torch" and not cand.weights and cand.passes is None
    return Serving(net, cand.channels_last, autocast=cand.autocast) if eager else net


def _build_engine(model: nn.Module, example: torch.Tensor, cand: Candidate, onnx_path: Path | None = None,
                  calibration: Calibration | None = None) -> Built:
    """The inference module of a non-eager candidate: ``weights`` casts a copy to the candidate's precision,
    ``compiled`` runs Inductor with freezing on it (compiled here, on ``example``, and timed), ``onnxruntime`` and
    ``openvino`` run ``onnx_path`` (exported from ``model`` when None)."""
    if cand.engine in ("onnxruntime", "openvino") and onnx_path is None:
        with tempfile.TemporaryDirectory(prefix="branchgraph-onnx-") as tmp:  # the engines read the file now
            return _build_engine(model, example, cand, export_for_runtimes(model, example, Path(tmp)), calibration)
    if cand.engine == "onnxruntime":
        return Built(OnnxRuntimeModule(onnx_path), example.contiguous())
    if cand.engine == "openvino":
        start = time.perf_counter()
        images = calibration.images if calibration is not None and cand.precision == "int8" else None
        net = OpenVinoModule(onnx_path, cand.precision, calibration=images)
        return Built(net, example.contiguous(), time.perf_counter() - start)
    if cand.precision == "int8" and calibration is None:
        raise ConfigError("int8 needs calibration data", param="calibration")
    net = (quantize_pt2e(model, example, calibration.images) if cand.precision == "int8"  # torch's own int8 (PT2E)
           else copy.deepcopy(model).eval())
    dtype = DTYPES[cand.precision] if cand.weights else None
    if cand.channels_last:
        net = net.to(memory_format=torch.channels_last)
    served = Serving(net.to(dtype) if dtype else net, cand.channels_last, weights=dtype)
    if cand.engine != "compiled":
        return Built(served, example)
    compiled = FrozenCompiled(served) if cand.precision == "int8" else torch.compile(served, options={"freezing": True})
    start = time.perf_counter()
    with torch.no_grad():
        compiled(example)
    return Built(compiled, example, time.perf_counter() - start)


def _untimed(count: int, steps_each: int, serves: int | None) -> str | None:
    """Why the first of ``count`` candidates is taken without timing (the only one, or a run of ``serves`` steps
    too short to repay ``steps_each`` timed steps of each), or None: time them."""
    if count == 1:
        return "the only candidate"
    if serves is not None and count * steps_each > REPAY_SHARE * serves:
        return (f"untimed: this run's {serves} steps are too few to repay timing {count} candidates (about "
                f"{count * steps_each} steps, over {REPAY_SHARE:.0%} of them)")
    return None


def _measure(runs: dict[str, Any], rounds: int, warmup: int,
             settle_s: float) -> tuple[dict[str, float], dict[str, float], str | None]:
    """Medians and per-round spreads of ``runs`` timed interleaved; measured again with twice the rounds when the
    rounds do not settle which is fastest (``_unsettled``), and a note when they still do not (not cached)."""
    medians, spread, doubt = {}, {}, None
    for attempt in (rounds, 2 * rounds):
        times = interleaved_times(runs, attempt, warmup if attempt == rounds else 0, settle_s)
        medians = {k: statistics.median(t) for k, t in times.items()}
        spread = {k: (max(t) - min(t)) / medians[k] for k, t in times.items()}
        doubt = _unsettled(times, medians)
        if doubt is None:
            return medians, spread, None
    return medians, spread, f"{doubt} in two measurements: the machine is busy, so this choice is not cached"


def _unsettled(times: dict[str, list[float]], medians: dict[str, float]) -> str | None:
    """Why the rounds leave the fastest candidate in doubt, or None. Each round times every candidate back to back,
    so a busy machine slows them alike: a candidate is compared with the fastest round by round (their ratio), and
    the fastest must win at least SIGN_SHARE of the rounds against it, unless their median ratio is within TIE."""
    best = min(medians, key=medians.__getitem__)
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[best], strict=True)]
        wins = sum(r > 1 for r in ratios)
        if name != best and abs(statistics.median(ratios) - 1) > TIE and wins < SIGN_SHARE * len(ratios):
            return f"{best} was faster than {name} in only {wins} of {len(ratios)} interleaved rounds"
    return None


def _build_all(model: nn.Module, example: torch.Tensor, mode: str, found: list[Candidate],
               compile_budget: float | None, calibration: Calibration | None = None
               ) -> tuple[dict[Candidate, Built], dict[str, str]]:
    """Each candidate built (ONNX exported once for the runtimes), and those that could not be, with the reason:
    an export the runtimes cannot take, a compile error, or a compile longer than ``compile_budget`` seconds."""
    built, left_out = {}, {}
    with tempfile.TemporaryDirectory(prefix="branchgraph-tune-") as tmp:
        onnx_path, onnx_error = None, None
        if any(c.engine in RUNTIME_ENGINES for c in found):
            try:
                onnx_path = export_for_runtimes(model, example, Path(tmp))
            except Exception as exc:  # an export failure leaves the runtimes out, with its first line
                onnx_error = f"ONNX export failed: {str(exc).strip().splitlines()[0][:160]}"
        for cand in found:
            if cand.engine in RUNTIME_ENGINES and onnx_path is None:
                left_out[cand.name] = onnx_error or "no ONNX graph"
            elif cand.engine == "compiled" and compile_budget == 0:
                left_out[cand.name] = "compile budget 0 s"
            else:
                try:
                    built[cand] = build_candidate(model, example, mode, cand, onnx_path, calibration)
                except Exception as exc:  # an engine that cannot take this model: left out, in one line
                    if isinstance(exc, ConfigError):
                        raise
                    left_out[cand.name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                    continue
                seconds = built[cand].compile_s
                if cand.engine == "compiled" and compile_budget is not None and seconds > compile_budget:
                    del built[cand]
                    left_out[cand.name] = f"compiled in {seconds:.0f} s, over the budget of {compile_budget:g} s"
    return built, left_out


def tune(
    model: nn.Module, example: torch.Tensor, target: torch.Tensor | None = None, mode: str = Mode.TRAIN, *,
    layouts: Sequence[bool] = (False, True), pass_sets: Sequence[Sequence[str] | None] = (None,),
    precisions: Sequence[str] | None = None, engines: Sequence[str] | None = None, rounds: int = 3,
    warmup: int = 1, cache: bool = True, retune: bool = False, tolerance: float = REDUCED_PRECISION_TOLERANCE,
    compile_budget: float | None = COMPILE_BUDGET_S, serves: int | None = None,
    calibration: Calibration | None = None,
) -> TuneResult:
    """Time every candidate (see ``candidates``) on ``example`` (and ``target`` for training steps) interleaved,
    reject one whose main output is further than ``tolerance`` (reduced precision) or ``FP32_TOLERANCE`` (fp32)
    from fp32 eager's normwise, and choose the fastest left; with ``calibration`` (inference), int8 candidates
    too, judged by held-out top-1 accuracy (``tune_checks.Checks``). ``model`` is not modified. With ``cache``,
    the choice is read from and written to ``cache_dir()/tune.json`` under the processor, torch version, model,
    input shape, mode, candidates and calibration data (``retune``: measure again and overwrite); a measurement
    whose rounds leave the fastest in doubt twice (``_unsettled``) is not cached. ``serves``: the steps the choice
    will run (a training run's); where timing would take more than REPAY_SHARE of them, the first candidate is
    taken unmeasured (a cached choice is still used)."""
    check_mode(mode)
    if rounds <= 0 or warmup < 0:
        raise ConfigError(f"rounds must be > 0 and warmup >= 0; got rounds={rounds}, warmup={warmup}")
    calibration = calibration if mode == Mode.EVAL else None
    found, left_out = candidates(example.device, mode, layouts, pass_sets, precisions, engines,
                                 calibration=calibration is not None)
    key = _cache_key(model, example, mode, found, calibration)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / CACHE_NAME
    entries, note = load_cache(path) if cache else ({}, None)
    notes = [note] if note else []
    checks = Checks(model, example, tolerance, calibration)
    if cache and not retune and digest in entries:
        hit, why = _cached(entries[digest], found)
        if hit is not None:
            why = _recheck(model, mode, hit.chosen, checks, compile_budget)
        if why is None and hit is not None:
            return replace(hit, key=key, left_out=left_out, cached=True, notes=notes, accuracy=checks.accuracy)
        notes.append(f"the cached choice for this model was not used ({why}): measured again")
    now = time.strftime("%Y-%m-%d %H:%M")
    untimed = _untimed(len(found), warmup + rounds, serves)
    if untimed is not None:
        return TuneResult(key, found[0], left_out=left_out, notes=notes, measured_at=now, untimed=untimed)
    y = target if target is not None else torch.zeros(example.shape[0], dtype=torch.long, device=example.device)
    built, failed = _build_all(model, example, mode, found, compile_budget, calibration)
    left_out |= failed
    runs, rejected, errors = _verified_runs(built, y, mode, checks)
    settle = SETTLE_S if any(c.engine in RUNTIME_ENGINES for c in built) else 0.0
    medians, spread, noisy = _measure(runs, rounds, warmup, settle)
    chosen = {c.name: c for c in found}[min(medians, key=medians.__getitem__)]
    compile_s = {c.name: b.compile_s for c, b in built.items() if b.compile_s}
    result = TuneResult(key, chosen, medians, rejected, left_out, notes=notes, spread=spread, errors=errors,
                        compile_s=compile_s, measured_at=now, accuracy=checks.accuracy)
    if noisy:
        result.notes.append(noisy)
    elif cache:
        entry = {"key": key, "chosen": asdict(chosen), "median_ms": {k: 1000 * v for k, v in medians.items()},
                 "spread": spread, "output_error": errors, "compile_s": compile_s, "rejected": rejected, "when": now}
        write_note = update_cache(path, digest, entry)
        if write_note:
            result.notes.append(write_note)
    return result


def _cache_key(model: nn.Module, example: torch.Tensor, mode: str, found: list[Candidate],
               calibration: Calibration | None = None) -> dict[str, Any]:
    """What a measurement depends on: processor, torch, device, threads, model, input shape, mode, candidates,
    heap policy and, where int8 was judged on it, the calibration data."""
    device = example.device
    return {"cpu": cpu_model(), "capability": cpu_capability(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "model": _model_id(model), "input": list(example.shape),
            "mode": mode, "candidates": [c.name for c in found], "heap": "keep" if keeping() else "system"} | (
                {"calibration": calibration.digest()} if calibration is not None else {})


def _verified_runs(built: dict[Candidate, Built], y: torch.Tensor, mode: str, checks: Checks
                   ) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """(a timed step per candidate that ``checks`` accept, the rejected ones with why, every output error); a
    ConfigError when none holds."""
    runs, rejected, errors = {}, {}, {}
    for cand, b in built.items():
        if cand != Candidate():
            try:
                errors[cand.name], why = checks.judge(b, cand)
            except ConfigError:
                raise
            except Exception as exc:  # an engine that fails on the check's images: rejected, in one line
                why = f"{type(exc).__name__} on the check's images: {str(exc).strip().splitlines()[0][:160]}"
            if why is not None:
                rejected[cand.name] = why
                continue
        runs[cand.name] = make_runner(b.net, b.x, y, mode, autocast=cand.autocast)
    if not runs:
        raise ConfigError(f"every candidate asked for is too far from fp32 on this model: "
                          f"{'; '.join(f'{k}: {v}' for k, v in rejected.items())}; use fp32 or auto")
    return runs, rejected, errors


def _recheck(model: nn.Module, mode: str, cand: Candidate, checks: Checks, compile_budget: float | None
             ) -> str | None:
    """Why a cached choice cannot be used on this model now, or None: it is built and checked again (a cache is a
    file anyone may edit, and the same network with other weights may not hold in reduced precision)."""
    if cand == Candidate():
        return None
    if cand.engine == "compiled" and compile_budget == 0:
        return "it is compiled and the compile budget is 0 s"
    try:
        built = build_candidate(model, checks.example, mode, cand, calibration=checks.calibration)
    except ConfigError:
        raise
    except Exception as exc:  # an engine that cannot take this model any more
        return f"{cand.name} does not build: {type(exc).__name__}"
    _, why = checks.judge(built, cand)
    return None if why is None else f"{cand.name} gives {why}"


def _cached(entry: Any, found: list[Candidate]) -> tuple[TuneResult | None, str | None]:
    """The cached entry as a result (key and cache flags filled in by the caller) if it is well-formed and its
    choice is still one of this run's candidates, else why not."""
    try:
        chosen = Candidate(**{k: tuple(v) if k == "passes" and v is not None else v
                              for k, v in entry["chosen"].items()})
        result = TuneResult({}, chosen, {str(k): float(v) / 1000 for k, v in entry["median_ms"].items()},
                            spread={str(k): float(v) for k, v in entry["spread"].items()},
                            errors={str(k): float(v) for k, v in entry["output_error"].items()},
                            compile_s={str(k): float(v) for k, v in entry["compile_s"].items()},
                            measured_at=str(entry["when"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, "its entry is malformed"
    if chosen not in found:
        return None, f"{chosen.name} is not among this run's candidates"
    if not 0 < result.median_s.get(chosen.name, float("nan")) < float("inf"):
        return None, "its entry has no time for its choice"
    return result, None
