"""The least-recomputation choice of regions as an integer program (scipy's HiGHS), where greedy orders get stuck.

Variables: one 0/1 per candidate region (take it) and per saved storage (keep it). A storage is kept when a unit
outside every chosen region saves it (unless a chosen saving op stops that save) or a chosen region reads it (a
storage whose saves are narrowed, lossy, has a second variable for its whole form a region reads); regions and
saving ops cover disjoint units. The kept bytes are exactly ``Planner.saved``'s. There is no peak
bound: the peak prediction is an estimate, and a program driving plans to its edge gave measured peaks past it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from branchgraph.memory.problem import Saves, Shrink


@dataclass
class Candidates:
    """What the program chooses from (what the planner knows): per candidate its units (``masks``, none for a
    saving op), input storages, cost, saving op (or None) and bytes rematerialised."""

    saves: Saves
    masks: np.ndarray
    inputs: list[np.ndarray]
    cost: np.ndarray
    shrinks: list[Shrink | None]
    transient: np.ndarray
    input_sizes: np.ndarray | None = None  # per storage, as a region's input (None: as saved; larger where other
    # saves are narrowed, and then kept in both forms)


def _units(candidates: Candidates, i: int) -> np.ndarray:
    """Units a candidate occupies: its range's, or the units a saving op replaces."""
    shrink = candidates.shrinks[i]
    if shrink is not None and not candidates.masks[i].any():
        return np.array(sorted({shrink.unit, *shrink.added}), dtype=np.int64)
    return np.flatnonzero(candidates.masks[i])


def solve(candidates: Candidates, budget: int, limit: int | None = None, seconds: float = 2.0) -> list[int] | None:
    """Candidate indices minimising the summed cost with kept bytes <= ``budget``; regions rematerialising more
    than ``limit`` are left out. None if the program finds nothing in ``seconds``."""
    saves, sizes = candidates.saves, candidates.saves.sizes.astype(np.float64)
    regions, storages = len(candidates.masks), len(sizes)
    whole = sizes if candidates.input_sizes is None else candidates.input_sizes.astype(np.float64)
    split = np.flatnonzero(whole != sizes)  # storages with a column of their own as a region's input
    column = np.arange(regions, regions + storages)
    column[split] = regions + storages + np.arange(len(split))
    columns = regions + storages + len(split)
    allowed = np.ones(regions, dtype=bool) if limit is None else candidates.transient <= limit
    rows: list[tuple[int, int, float]] = []  # (row, column, value); columns: regions, then storages
    lower: list[float] = []
    upper: list[float] = []

    def row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(lower)
        rows.extend((r, c, v) for c, v in entries)
        lower.append(lo)
        upper.append(hi)

    occupied: dict[int, list[int]] = {}
    for i in range(regions):
        for u in _units(candidates, i):
            occupied.setdefault(int(u), []).append(i)
    for members in occupied.values():
        if len(members) > 1:
            row([(i, 1.0) for i in members], -np.inf, 1.0)
    stoppers: dict[int, list[int]] = {}  # entry -> saving ops that stop it
    for i, shrink in enumerate(candidates.shrinks):
        if shrink is not None:
            for e in shrink.entries:
                stoppers.setdefault(int(e), []).append(i)
    for e, (s, u) in enumerate(zip(saves.entry_storage, saves.entry_unit, strict=True)):
        covering = [i for i in occupied.get(int(u), []) if candidates.shrinks[i] is None or candidates.masks[i].any()]
        row([(regions + int(s), 1.0), *((i, 1.0) for i in covering), *((i, 1.0) for i in stoppers.get(e, []))],
            1.0, np.inf)
    for i, inputs in enumerate(candidates.inputs):
        for s in inputs:
            row([(int(column[s]), 1.0), (i, -1.0)], 0.0, np.inf)
    added = np.zeros(regions)
    for i, shrink in enumerate(candidates.shrinks):
        if shrink is not None and not candidates.masks[i].any():
            added[i] = sum(shrink.added.values())
    kept = [*((i, added[i]) for i in range(regions) if added[i]), *((regions + s, sizes[s]) for s in range(storages)),
            *((int(column[s]), whole[s]) for s in split)]
    row(kept, -np.inf, float(budget))
    cost = np.concatenate([candidates.cost.astype(np.float64), np.zeros(columns - regions)])
    r, c, v = zip(*rows, strict=True) if rows else ((), (), ())
    matrix = coo_array((v, (r, c)), shape=(len(lower), columns)).tocsr()
    high = np.concatenate([allowed.astype(np.float64), np.ones(columns - regions)])
    result = milp(cost, constraints=LinearConstraint(matrix, lower, upper), integrality=np.ones(len(cost)),
                  bounds=Bounds(np.zeros(len(cost)), high),
                  options={"time_limit": seconds, "mip_rel_gap": 1e-2})
    if result.x is None:
        return None
    return [int(i) for i in np.flatnonzero(result.x[:regions] > 0.5)]
