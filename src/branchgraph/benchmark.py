"""``branchgraph bench``: eager fp32, torch.compile, branchgraph-optimised and optimised+compiled (and, with
tuning, the measured best and it compiled), timed interleaved in one process (each round runs every variant
once), reported as medians, ratios to eager, and GFLOP/s against the machine's matmul peak.
``bench_parallel`` (``branchgraph bench-parallel``) times the captured model with its branches run one after
another and concurrently."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.choices import COMPILE_BUDGET_S, DEFAULTS
from branchgraph.errors import ConfigError
from branchgraph.example import example_for
from branchgraph.graph import capture, measure
from branchgraph.hardware import describe_text, matmul_peak
from branchgraph.inference.engines import Built, export_for_runtimes
from branchgraph.inference.int8 import CALIBRATION_SIZE, MAX_ACCURACY_DROP_POINTS, Calibration, int8_available, top1
from branchgraph.inference.pt2e import pt2e_available
from branchgraph.inference.runtimes import available, missing_note
from branchgraph.models.registry import resolve_model
from branchgraph.passes import optimize, output_error, parallel
from branchgraph.passes.manager import resolve
from branchgraph.timing import make_runner, time_interleaved
from branchgraph.training.served_run import calibration_for, resolve_any
from branchgraph.tune import (
    DTYPES,
    RUNTIME_ENGINES,
    SETTLE_S,
    Candidate,
    TuneResult,
    build_candidate,
    usable_precisions,
)
from branchgraph.tune import tune as tune_choice

VARIANTS = ("eager", "compiled", "optimised", "optimised+compiled", "tuned", "tuned+compiled")
PEERS = ("compiled (frozen)", "compiled (frozen) int8", "onnxruntime fp32", "openvino fp32", "openvino bf16",
         "openvino int8")


@dataclass
class BenchResult:
    """Median seconds per call of each variant, its speed-up over eager, its achieved GFLOP/s against this
    machine's measured matmul peak for the variant's precision (the roofline), and in inference its output error
    (its main output against eager fp32's, normwise: ||out - ref|| / ||ref||) and, with calibration data, the
    held-out top-1 of eager fp32 and of every int8 variant."""

    model: str
    mode: str
    batch: int
    input_size: tuple[int, ...]
    rounds: int
    median_s: dict[str, float]
    passes: list[str]
    gflop_per_call: float
    precision: dict[str, str]
    peak_gflops: dict[str, float]
    machine: str
    tuning: TuneResult | None = None
    errors: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        eager = self.median_s["eager"]
        return {"model": self.model, "mode": self.mode, "batch": self.batch, "input_size": list(self.input_size),
                "rounds": self.rounds, "passes": self.passes, "threads": torch.get_num_threads(),
                "machine": self.machine, "gflop_per_call": self.gflop_per_call, "peak_gflops": self.peak_gflops,
                "variants": {v: {"median_ms": 1000 * t, "speedup_vs_eager": eager / t, "precision": self.precision[v],
                                 "gflops": self.gflop_per_call / t,
                                 "fraction_of_peak": self.gflop_per_call / t / self.peak_gflops[self.precision[v]],
                                 "output_error": self.errors.get(v), "compile_s": self.compile_s.get(v),
                                 "accuracy": self.accuracy.get(v)}
                             for v, t in self.median_s.items()},
                "tuning": self.tuning.to_dict() if self.tuning else None, "notes": self.notes}

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        d = self.to_dict()
        peaks = ", ".join(f"{p} {g:.0f}" for p, g in self.peak_gflops.items())
        lines = [f"{self.model} {self.mode}, batch {self.batch}, input {list(self.input_size)}, {self.rounds} "
                 f"interleaved rounds; passes: {', '.join(self.passes)}",
                 f"machine: {self.machine}",
                 f"roofline: {self.gflop_per_call:.1f} GFLOP per call; measured matmul peak GFLOP/s: {peaks}",
                 f"{'variant':<20} {'median ms':>10} {'vs eager':>9} {'GFLOP/s':>8} {'of peak':>8} {'precision':<9}"
                 + (" error" if self.errors else "")]
        for v, r in d["variants"].items():
            error = "" if r["output_error"] is None else f" {r['output_error']:.1e}"
            built = f" (compiled in {r['compile_s']:.0f} s)" if r["compile_s"] else ""
            built += f" held-out top-1 {r['accuracy']:.4f}" if r["accuracy"] is not None else ""
            lines.append(f"{v:<20} {r['median_ms']:>10.1f} {r['speedup_vs_eager']:>8.2f}x {r['gflops']:>8.1f} "
                         f"{r['fraction_of_peak']:>7.0%} {r['precision']:<9}{error}{built}")
        if self.tuning is not None:
            lines.append(self.tuning.to_text())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def step_gflop(model: nn.Module, example: torch.Tensor, mode: str) -> float:
    """GFLOP of one call on ``example``'s batch: 2 FLOPs per multiply-accumulate of the forward (eval), or of
    the forward and backward (train), counted per layer on one sample (``branchgraph.graph.measure``)."""
    layers = measure(copy.deepcopy(model).train(), example[:1]).layers.values()
    macs = sum(r.macs + (r.backward_macs if mode == "train" else 0) for r in layers)
    return 2 * macs * example.shape[0] / 1e9


def _output_error(net: nn.Module, x: torch.Tensor, autocast: torch.dtype | None, reference: torch.Tensor) -> float:
    """``net``'s main output against ``reference``, normwise (``branchgraph.passes.output_error``)."""
    context = torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        return output_error(net(x), reference)


def _quality(model: nn.Module, x: torch.Tensor, mode: str, runs: dict[str, tuple[nn.Module, torch.Tensor, Any]],
             precision: dict[str, str], calibration: Calibration | None) -> tuple[dict[str, float], dict[str, float]]:
    """In inference, each variant's output error against eager fp32 on ``x``, and the held-out top-1 of eager and
    of every int8 variant where ``calibration`` data is known."""
    if mode != "eval":
        return {}, {}
    with torch.no_grad():
        reference = model(x)
    errors = {v: _output_error(net, inp, cast, reference) for v, (net, inp, cast) in runs.items() if v != "eager"}
    accuracy = {}
    for v in [] if calibration is None else [v for v in runs if v == "eager" or precision[v] == "int8"]:
        with contextlib.suppress(Exception):  # an engine that fails on a new batch size: no figure, not a crash
            accuracy[v] = top1(runs[v][0], *calibration.val)
    return errors, accuracy


def _peers(model: nn.Module, x: torch.Tensor, precisions: list[str], compile_off: str | None,
           calibration: Calibration | None = None) -> tuple[dict[str, Built], list[str]]:
    """Inductor with freezing (unless ``compile_off`` says why not; int8 through PT2E too), and ONNX Runtime and
    OpenVINO (fp32, bf16 where native, int8) on the exported graph, int8 calibrated on ``calibration``: the engines
    a user could deploy instead; notes for those left out."""
    int8 = "no calibration data (a run directory as the model, or calibration data)" if calibration is None \
        else int8_available()
    reduced = [p for p, wanted in (("bf16", "bf16" in precisions), ("int8", not int8)) if wanted]
    compiled = [] if compile_off else [Candidate(engine="compiled"), *(
        [Candidate("int8", engine="compiled")] if calibration is not None and pt2e_available() is None else [])]
    wanted = [*compiled, Candidate("fp32", engine="onnxruntime"),
              Candidate("fp32", engine="openvino"), *(Candidate(p, engine="openvino") for p in reduced)]
    int8_note = int8 and available("openvino") and f"openvino int8 left out: {int8}"  # else: missing_note's
    built, notes = {}, [n for n in [missing_note(), int8_note] if n]
    if compile_off:
        notes.append(f"compiled (frozen) left out: {compile_off}")
    with tempfile.TemporaryDirectory(prefix="branchgraph-bench-") as tmp:
        onnx_path = None
        if any(available(r) for r in RUNTIME_ENGINES):
            try:
                onnx_path = export_for_runtimes(model, x, Path(tmp))
            except Exception as exc:  # the runtimes are left out, with the export's first line
                notes.append(f"ONNX export failed, so no runtime is compared: {str(exc).strip().splitlines()[0]}")
        for cand in wanted:
            if cand.engine in RUNTIME_ENGINES and (onnx_path is None or not available(cand.engine)):
                continue
            name = f"compiled (frozen){' int8' * (cand.precision == 'int8')}" if cand.engine == "compiled" \
                else cand.name
            try:
                built[name] = build_candidate(model, x, "eval", cand, onnx_path, calibration)
            except Exception as exc:  # one engine failing on this model does not stop the others
                notes.append(f"{name} left out: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}")
    return built, notes


def bench(
    name: nn.Module | str, mode: str = DEFAULTS["bench"]["mode"], batch: int = DEFAULTS["bench"]["batch"],
    input_size: tuple[int, ...] | None = None,
    rounds: int = 10, warmup: int = 2, compile: bool = True, passes: list[str] | None = None, tune: bool = False,
    seed: int = 0, model_kwargs: dict[str, Any] | None = None, peers: bool = False, retune: bool = False,
    engines: list[str] | None = None, compile_budget: float | None = COMPILE_BUDGET_S,
    calibration: Calibration | str | None = None, calibration_size: int = CALIBRATION_SIZE,
    max_accuracy_drop: float = MAX_ACCURACY_DROP_POINTS, trust_checkpoint: bool = False,
) -> BenchResult:
    """Time the variants of model ``name`` (a module, registry name, spec or run directory; ``compile=False`` leaves
    out the compiled ones); ``tune`` adds the variant ``branchgraph.tune`` picks (among ``engines``); ``peers``
    (inference) adds Inductor with freezing, ONNX Runtime and OpenVINO, and int8 with calibration data (a run's)."""
    if peers and mode != "eval":
        raise ConfigError("peers compares inference engines: use it with mode 'eval'", param="peers")
    torch.manual_seed(seed)  # a module's dropout and the compiled variants draw from it too
    label, model, size, classes, run = resolve_any(name, input_size, model_kwargs, seed, trust_checkpoint)
    model.train(mode == "train")
    x, y = example_for(size, batch, seed, classes)
    data = calibration_for(calibration, run, size, calibration_size, max_accuracy_drop / 100) \
        if mode == "eval" and (tune or peers) else None
    names = resolve(passes, mode)
    optimised, report = optimize(model, x[:2], passes=names, mode=mode, verify=False)
    reduced = "bf16" if "precision" in names else "fp32"
    nets: dict[str, nn.Module] = {"eager": model, "optimised": optimised}
    precision = {"eager": "fp32", "compiled": "fp32", "optimised": reduced, "optimised+compiled": reduced}
    inputs = dict.fromkeys(VARIANTS, x)
    autocast: dict[str, torch.dtype | None] = {}
    compile_s: dict[str, float] = {}
    tuning, notes = None, []
    if tune:
        tuning = tune_choice(model, x, y, mode, pass_sets=(None, names), retune=retune, engines=engines,
                             compile_budget=compile_budget if compile else 0, calibration=data)
        chosen = build_candidate(model, x, mode, tuning.chosen, calibration=data)
        nets["tuned"], inputs["tuned"], inputs["tuned+compiled"] = chosen.net, chosen.x, chosen.x
        precision["tuned"] = precision["tuned+compiled"] = tuning.chosen.precision
        autocast["tuned"] = autocast["tuned+compiled"] = tuning.chosen.autocast
    if compile:
        nets["compiled"] = torch.compile(copy.deepcopy(model))
        nets["optimised+compiled"] = torch.compile(copy.deepcopy(optimised))
        if tune and tuning is not None and tuning.chosen.engine == "torch":
            nets["tuned+compiled"] = torch.compile(copy.deepcopy(nets["tuned"]))
    order = [v for v in VARIANTS if v in nets]
    if peers:
        off = "compile is off" if not compile else "compile budget 0 s" if compile_budget == 0 else None
        found, notes = _peers(model, x, usable_precisions(x.device, None)[0], off, data)
        for variant, b in found.items():
            nets[variant], inputs[variant] = b.net, b.x
            precision[variant] = variant.rsplit(" ", 1)[1] if variant.endswith(("bf16", "int8")) else "fp32"
            if b.compile_s:
                compile_s[variant] = b.compile_s
        order += list(found)
    runs = {v: make_runner(nets[v], inputs[v], y, mode, autocast=autocast.get(v)) for v in order}
    medians = time_interleaved(runs, rounds, warmup, settle_s=SETTLE_S if peers else 0.0)
    errors, accuracy = _quality(model, x, mode, {v: (nets[v], inputs[v], autocast.get(v)) for v in order}, precision,
                                data)
    peaks = {p: matmul_peak(DTYPES.get(p, torch.int8)) for p in dict.fromkeys(precision[v] for v in medians)}
    return BenchResult(model=label, mode=mode, batch=batch, input_size=size, rounds=rounds, median_s=medians,
                       passes=[p.name for p in report.passes], gflop_per_call=step_gflop(model, x, mode),
                       precision={v: precision[v] for v in medians}, peak_gflops=peaks, machine=describe_text(),
                       tuning=tuning, errors=errors, compile_s=compile_s, notes=notes, accuracy=accuracy)


@dataclass
class ParallelBenchResult:
    """Median seconds per call, branches sequential and concurrent, for each batch size."""

    model: str
    mode: str
    device: str
    input_size: tuple[int, ...]
    rounds: int
    workers: int | None
    median_s: dict[int, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mode": self.mode, "device": self.device, "input_size": list(self.input_size),
                "rounds": self.rounds, "workers": self.workers, "threads": torch.get_num_threads(),
                "batches": {str(b): {"sequential_ms": 1000 * t["sequential"], "parallel_ms": 1000 * t["parallel"],
                                     "speedup": t["sequential"] / t["parallel"]} for b, t in self.median_s.items()}}

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        d = self.to_dict()
        lines = [f"{self.model} {self.mode} on {self.device}, input {list(self.input_size)}, {self.rounds} interleaved "
                 f"rounds, {d['threads']} intra-op threads, workers {self.workers or 'one per branch'}",
                 f"{'batch':>6} {'sequential ms':>14} {'parallel ms':>12} {'speed-up':>9}"]
        lines += [f"{b:>6} {r['sequential_ms']:>14.1f} {r['parallel_ms']:>12.1f} {r['speedup']:>8.2f}x"
                  for b, r in d["batches"].items()]
        return "\n".join(lines)


def bench_parallel(
    name: str, mode: str = DEFAULTS["bench_parallel"]["mode"],
    batches: tuple[int, ...] = DEFAULTS["bench_parallel"]["batches"],
    input_size: tuple[int, ...] | None = None, rounds: int = 10, warmup: int = 2, workers: int | None = None,
    device: str = "cpu", model_kwargs: dict[str, Any] | None = None, seed: int = 0,
) -> ParallelBenchResult:
    """The captured model against the same graph after the ``parallel`` pass, interleaved, at each batch size."""
    _, model, size, found = resolve_model(name, input_size, model_kwargs, seed)
    model.train(mode == "train").to(device)
    sequential = capture(model, example_for(size, 1, seed, device=device)[0]).graph_module
    if sequential is None:
        raise ConfigError(f"torch.fx cannot trace {name}: the parallel pass needs a captured graph")
    nets = {"sequential": sequential.train(mode == "train"),
            "parallel": parallel(sequential, mode=mode, workers=workers).train(mode == "train")}
    medians = {}
    for batch in batches:
        x, y = example_for(size, batch, seed, found, device=device)
        medians[batch] = time_interleaved({v: make_runner(n, x, y, mode) for v, n in nets.items()}, rounds, warmup)
    label = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return ParallelBenchResult(name, mode, label, size, rounds, workers, medians)
