"""Timing helpers shared by the benchmarks: a training or inference step as a closure, and interleaved medians."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def make_runner(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, autocast: torch.dtype | None = None
) -> Callable[[], None]:
    """One inference (no grad) or one SGD training step of ``net`` on (x, y), as a closure to time (on CUDA it
    waits for the device, so the time is the work's, not the launch's); ``autocast`` runs the forward under
    ``torch.autocast`` to that dtype."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def context() -> contextlib.AbstractContextManager[object]:
        return torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()

    if mode == "eval":
        def infer() -> None:
            with torch.no_grad(), context():
                net(x)
            sync()
        return infer
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with context():
            out = net(x)
        loss = F.cross_entropy((out[0] if isinstance(out, tuple) else out).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
    return step


def interleaved_times(runs: dict[str, Callable[[], None]], rounds: int, warmup: int = 1,
                      settle_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds of each call of each closure, per round; every round calls each once, so machine noise hits all
    alike, and each round runs them in its own shuffled order (seeded by the round), so none always follows the
    same neighbour. With ``settle_s``, each timed call follows untimed calls of the same closure lasting at least that
    long: engines with thread pools of their own (OpenMP's spins after torch's ops, TBB's and ONNX Runtime's
    wake up) otherwise make a call pay for the variant before it."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {v: [] for v in runs}
    for index in range(rounds):
        order = list(runs)
        random.Random(index).shuffle(order)
        for variant in order:
            run = runs[variant]
            start = time.perf_counter()
            while settle_s and time.perf_counter() - start < settle_s:
                run()
            start = time.perf_counter()
            run()
            times[variant].append(time.perf_counter() - start)
    return times


def time_interleaved(runs: dict[str, Callable[[], None]], rounds: int, warmup: int = 1,
                     settle_s: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each closure, timed interleaved (``interleaved_times``)."""
    return {v: statistics.median(t) for v, t in interleaved_times(runs, rounds, warmup, settle_s).items()}


def paired_ratios(times: list[float], reference: list[float]) -> list[float]:
    """A variant's time over the reference's in the same round, per round: their median cancels noise that lasts
    a round (another process on a shared machine), where a ratio of medians keeps it."""
    return [t / r for t, r in zip(times, reference, strict=True)]
