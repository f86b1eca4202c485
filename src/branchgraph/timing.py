"""Timing helpers shared by the benchmarks: a training or inference step as a closure, and interleaved medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def make_runner(net: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str) -> Callable[[], None]:
    """One inference (no grad) or one SGD training step of ``net`` on (x, y), as a closure to time (on CUDA it
    waits for the device, so the time is the work's, not the launch's)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    if mode == "eval":
        def infer() -> None:
            with torch.no_grad():
                net(x)
            sync()
        return infer
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
    return step


def time_interleaved(runs: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each closure; every round calls each once, so machine noise hits all alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(rounds):
        for variant, run in runs.items():
            start = time.perf_counter()
            run()
            times[variant].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}
