"""How long each unit of a traced graph takes in a training forward, and what an exact saving op would add to its
step, measured in place on the unit's real input (medians of interleaved repeats), for the planner's costs."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx

from branchgraph.memory import saving_ops
from branchgraph.timing import time_interleaved

Op = Callable[[torch.Tensor], torch.Tensor]


def forward_backward(op: Op, x: torch.Tensor, grad: torch.Tensor | None = None) -> Callable[[], None]:
    """One forward and backward of ``op`` on a fresh leaf copy of ``x``, with ``grad`` as the output's gradient
    (default ones shaped and laid out like the output, as a network's are)."""

    def run() -> None:
        out = op(x.detach().requires_grad_(True))
        out.backward(torch.ones_like(out) if grad is None else grad)
    return run


def saving_overhead(plain: Op, saving: Op, x: torch.Tensor, repeats: int) -> float:
    """Seconds ``saving`` adds to a forward+backward of ``plain`` on ``x``: the difference of interleaved
    medians, at least 0."""
    medians = time_interleaved({"plain": forward_backward(plain, x), "saving": forward_backward(saving, x)},
                               repeats, warmup=1)
    return max(0.0, medians["saving"] - medians["plain"])


class _Timer(fx.Interpreter):
    """Runs the graph timing each unit; where ``pairs`` has a unit's (op, saving op), also times both on a copy
    of the unit's input."""

    def __init__(self, gm: fx.GraphModule, position: dict[fx.Node, int], pairs: dict[int, tuple[Op, Op]],
                 repeats: int) -> None:
        super().__init__(gm)
        self.position, self.pairs, self.repeats = position, pairs, repeats
        self.seconds = np.zeros(len(position))
        self.saving = np.zeros(len(position))

    def run_node(self, n: fx.Node) -> Any:
        k = self.position.get(n, -1)
        if k < 0:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        pair = self.pairs.get(k)
        source = args[0].detach().clone() if pair is not None and isinstance(args[0], torch.Tensor) else None
        start = time.perf_counter()
        result = getattr(self, n.op)(n.target, args, kwargs)
        self.seconds[k] = time.perf_counter() - start
        if pair is not None and source is not None:
            self.saving[k] = saving_overhead(*pair, source, self.repeats)
        return result


def time_units(gm: fx.GraphModule, units: list[fx.Node], example: torch.Tensor, repeats: int = 3,
               saving: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(per unit: median seconds over ``repeats`` training forwards, per unit: seconds its saving op adds to a
    step, 0 where none applies or ``saving`` is off). Each forward's saved tensors are freed before the next, as
    in training."""
    position = {n: k for k, n in enumerate(units)}
    pairs = {k: p for k, n in enumerate(units) if saving and saving_ops.kind(gm, n) and (p := saving_ops.pair(gm, n))}
    runs, overheads = [], np.zeros(len(units))
    gc.collect()  # garbage of the recording run must not be freed inside a timed one
    for r in range(repeats):
        timer = _Timer(gm, position, pairs if r == 0 else {}, repeats)
        timer.run(example)
        runs.append(timer.seconds)
        if r == 0:
            overheads = timer.saving
        del timer
    return np.median(np.stack(runs), axis=0), overheads
