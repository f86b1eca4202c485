"""Measured memory and step time of a model's training variants (plain, checkpointed, reversible), side by side."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from branchgraph.graph.record import Measurement, measure
from branchgraph.timing import interleaved_times, make_runner, paired_ratios

MIB = 2**20


def step_memory(model: nn.Module, example: torch.Tensor) -> Measurement:
    """One training step of a copy of ``model``, measured after a warm-up step (the first call of some
    operators, checkpoint's among them, allocates caches once, which is not activation memory)."""
    net = copy.deepcopy(model).train()
    out = net(example)
    sum(t.float().sum() for t in (out if isinstance(out, tuple) else (out,))).backward()
    net.zero_grad(set_to_none=True)
    del out
    return measure(net, example)  # which collects garbage first


@dataclass
class VariantResult:
    """One variant's measured step: what its forward kept for backward, its peak, and its step times (one per
    interleaved round)."""

    name: str
    forward_bytes: int
    peak_bytes: int
    times_s: list[float] | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    def to_dict(self, plain: VariantResult) -> dict[str, Any]:
        """Figures and ratios against ``plain``; the step-time ratio is the median of per-round ratios, with
        their range."""
        ratios = paired_ratios(self.times_s, plain.times_s) if self.times_s and plain.times_s else []
        return {
            "name": self.name, "forward_mib": self.forward_bytes / MIB, "peak_mib": self.peak_bytes / MIB,
            "forward_vs_plain": self.forward_bytes / plain.forward_bytes,
            "peak_vs_plain": self.peak_bytes / plain.peak_bytes,
            "median_s": self.median_s,
            "time_vs_plain": statistics.median(ratios) if ratios else None,
            "time_vs_plain_range": [min(ratios), max(ratios)] if ratios else None,
        }


def compare_variants(
    variants: dict[str, nn.Module], example: torch.Tensor, target: torch.Tensor, rounds: int = 0
) -> list[VariantResult]:
    """Measure each variant's training-step memory, then (``rounds`` > 0) time SGD steps of all of them
    interleaved in this process, so that machine noise hits every variant alike. The first variant is the
    reference the ratios are taken against."""
    results = []
    for name, net in variants.items():
        m = step_memory(net, example)
        if m.forward_bytes is None or m.peak_bytes is None:
            raise RuntimeError("measuring memory needs glibc's mallinfo2 (Linux, glibc >= 2.33)")
        results.append(VariantResult(name, m.forward_bytes, m.peak_bytes))
    if rounds > 0:
        copies = {name: copy.deepcopy(net).train() for name, net in variants.items()}
        times = interleaved_times({n: make_runner(net, example, target, "train") for n, net in copies.items()},
                                  rounds, warmup=1)
        for result in results:
            result.times_s = times[result.name]
    return results


def table(results: list[VariantResult]) -> str:
    """The results as aligned text, ratios against the first row (step time: median of per-round ratios, and
    their range)."""
    plain = results[0]
    lines = [f"{'variant':<24} {'kept MiB':>9} {'vs plain':>9} {'peak MiB':>9} {'vs plain':>9} {'step s':>7} "
             f"{'vs plain':>9} {'range':>11}"]
    for r in results:
        d = r.to_dict(plain)
        low, high = d["time_vs_plain_range"] or (0.0, 0.0)
        timing = (f"{d['median_s']:>7.3f} {d['time_vs_plain']:>8.2f}x {low:>5.2f}-{high:.2f}" if d["median_s"]
                  is not None else f"{'-':>7} {'-':>9}")
        lines.append(f"{r.name:<24} {d['forward_mib']:>9.1f} {d['forward_vs_plain']:>8.1%} {d['peak_mib']:>9.1f} "
                     f"{d['peak_vs_plain']:>8.1%} {timing}")
    return "\n".join(lines)
