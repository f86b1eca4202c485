"""``branchgraph bench``: eager fp32, torch.compile, branchgraph-optimised and optimised+compiled, timed
interleaved in one process (each round runs every variant once), reported as medians and ratios to eager.
``--parallel`` instead times the captured model with its branches run one after another and concurrently."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from branchgraph.graph import capture
from branchgraph.models import create_model, model_info
from branchgraph.passes import optimize, parallel
from branchgraph.timing import make_runner, time_interleaved

VARIANTS = ("eager", "compiled", "optimised", "optimised+compiled")


@dataclass
class BenchResult:
    """Median seconds per call of each variant, and its speed-up over eager."""

    model: str
    mode: str
    batch: int
    input_size: tuple[int, ...]
    rounds: int
    median_s: dict[str, float]
    passes: list[str]

    def to_dict(self) -> dict[str, Any]:
        eager = self.median_s["eager"]
        return {"model": self.model, "mode": self.mode, "batch": self.batch, "input_size": list(self.input_size),
                "rounds": self.rounds, "passes": self.passes, "threads": torch.get_num_threads(),
                "variants": {v: {"median_ms": 1000 * t, "speedup_vs_eager": eager / t}
                             for v, t in self.median_s.items()}}

    def to_text(self) -> str:
        d = self.to_dict()
        lines = [f"{self.model} {self.mode}, batch {self.batch}, input {list(self.input_size)}, {self.rounds} "
                 f"interleaved rounds, {d['threads']} threads; passes: {', '.join(self.passes)}",
                 f"{'variant':<22} {'median ms':>10} {'vs eager':>9}"]
        lines += [f"{v:<22} {r['median_ms']:>10.1f} {r['speedup_vs_eager']:>8.2f}x" for v, r in d["variants"].items()]
        return "\n".join(lines)


def bench(
    name: str, mode: str = "eval", batch: int = 128, input_size: tuple[int, ...] | None = None,
    rounds: int = 10, warmup: int = 2, compile: bool = True, passes: list[str] | None = None,
) -> BenchResult:
    """Time the variants of registry model ``name`` (``compile=False`` leaves out the two compiled ones)."""
    size = tuple(input_size or model_info(name).input_size)
    torch.manual_seed(0)
    model = create_model(name).train(mode == "train")
    x = torch.randn(batch, *size)
    classes = model_info(name).num_classes or 1
    y = torch.randint(0, classes, (batch,))
    optimised, report = optimize(model, x[:2], passes=passes, mode=mode, verify=False)
    nets: dict[str, nn.Module] = {"eager": model, "optimised": optimised}
    if compile:
        nets["compiled"] = torch.compile(copy.deepcopy(model))
        nets["optimised+compiled"] = torch.compile(copy.deepcopy(optimised))
    runs = {v: make_runner(nets[v], x, y, mode) for v in VARIANTS if v in nets}
    medians = time_interleaved(runs, rounds, warmup)
    return BenchResult(name, mode, batch, size, rounds, medians, [p.name for p in report.passes])


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

    def to_text(self) -> str:
        d = self.to_dict()
        lines = [f"{self.model} {self.mode} on {self.device}, input {list(self.input_size)}, {self.rounds} interleaved "
                 f"rounds, {d['threads']} intra-op threads, workers {self.workers or 'one per branch'}",
                 f"{'batch':>6} {'sequential ms':>14} {'parallel ms':>12} {'speed-up':>9}"]
        lines += [f"{b:>6} {r['sequential_ms']:>14.1f} {r['parallel_ms']:>12.1f} {r['speedup']:>8.2f}x"
                  for b, r in d["batches"].items()]
        return "\n".join(lines)


def bench_parallel(
    name: str, mode: str = "eval", batches: tuple[int, ...] = (1, 8, 32, 128),
    input_size: tuple[int, ...] | None = None, rounds: int = 10, warmup: int = 2, workers: int | None = None,
    device: str = "cpu",
) -> ParallelBenchResult:
    """The captured model against the same graph after the ``parallel`` pass, interleaved, at each batch size."""
    size = tuple(input_size or model_info(name).input_size)
    torch.manual_seed(0)
    model = create_model(name).train(mode == "train").to(device)
    classes = model_info(name).num_classes or 1
    sequential = capture(model, torch.randn(1, *size, device=device)).graph_module
    assert sequential is not None  # every registry model traces
    nets = {"sequential": sequential.train(mode == "train"),
            "parallel": parallel(sequential, mode=mode, workers=workers).train(mode == "train")}
    medians = {}
    for batch in batches:
        x = torch.randn(batch, *size, device=device)
        y = torch.randint(0, classes, (batch,), device=device)
        medians[batch] = time_interleaved({v: make_runner(n, x, y, mode) for v, n in nets.items()}, rounds, warmup)
    label = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return ParallelBenchResult(name, mode, label, size, rounds, workers, medians)
