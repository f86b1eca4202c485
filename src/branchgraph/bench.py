"""``branchgraph bench``: eager fp32, torch.compile, branchgraph-optimised and optimised+compiled, timed
interleaved in one process (each round runs every variant once), reported as medians and ratios to eager."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from branchgraph.models import create_model, model_info
from branchgraph.passes import optimize
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
