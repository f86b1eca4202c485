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


class Program:
    """The program's constraints, built once per set of candidates: solves at other budgets and limits change only
    the kept-bytes row's bound and the regions' upper bounds (a plan asks for several)."""

    def __init__(self, candidates: Candidates) -> None:
        from scipy.sparse import coo_array  # here, not at import: scipy costs every CLI command 0.6 s

        sizes = candidates.saves.sizes.astype(np.float64)
        units, storages = candidates.saves.entry_unit, candidates.saves.entry_storage
        regions = len(candidates.masks)
        whole = sizes if candidates.input_sizes is None else candidates.input_sizes.astype(np.float64)
        split = np.flatnonzero(whole != sizes)  # storages with a column of their own as a region's input
        column = np.arange(regions, regions + len(sizes))
        column[split] = regions + len(sizes) + np.arange(len(split))
        columns = regions + len(sizes) + len(split)
        masks = np.asarray(candidates.masks, dtype=bool)
        pure = [i for i, shrink in enumerate(candidates.shrinks) if shrink is not None and not masks[i].any()]
        # Candidates sharing a unit exclude each other: (candidate, unit) pairs, one row per shared unit.
        owner, unit = np.nonzero(masks)
        if pure:
            extra = [_units(candidates, i) for i in pure]
            owner = np.concatenate([owner, np.repeat(pure, [len(u) for u in extra])])
            unit = np.concatenate([unit, *extra])
        shared, count = np.unique(unit, return_counts=True)
        shared = shared[count > 1]
        share_row = np.full(max(int(unit.max(initial=-1)) + 1, 1), -1)
        share_row[shared] = np.arange(len(shared))
        take = share_row[unit] >= 0
        parts = [(share_row[unit[take]], owner[take], np.ones(int(take.sum())))]
        bounds = [(np.full(len(shared), -np.inf), np.ones(len(shared)))]
        # An entry's storage is kept unless a region covering its unit, or a saving op stopping it, is taken.
        base = len(shared)
        entries = np.arange(len(units))
        parts.append((base + entries, regions + storages, np.ones(len(units))))
        cover_entry, cover_region = np.nonzero(masks[:, units].T)
        parts.append((base + cover_entry, cover_region, np.ones(len(cover_entry))))
        stopped = [(np.asarray(shrink.entries, dtype=np.int64), i) for i, shrink in enumerate(candidates.shrinks)
                   if shrink is not None and len(shrink.entries)]
        if stopped:
            stop_entry = np.concatenate([e for e, _ in stopped])
            stop_op = np.concatenate([np.full(len(e), i) for e, i in stopped])
            parts.append((base + stop_entry, stop_op, np.ones(len(stop_entry))))
        bounds.append((np.ones(len(units)), np.full(len(units), np.inf)))
        # A region taken keeps its inputs.
        base += len(units)
        reader = np.concatenate([np.full(len(inputs), i) for i, inputs in enumerate(candidates.inputs)] or [[]])
        read = np.concatenate([np.asarray(inputs, dtype=np.int64) for inputs in candidates.inputs] or [[]])
        reads = base + np.arange(len(read))
        parts += [(reads, column[read.astype(np.int64)], np.ones(len(read))), (reads, reader, -np.ones(len(read)))]
        bounds.append((np.zeros(len(read)), np.full(len(read), np.inf)))
        # The kept bytes, whose bound is the budget, set per solve.
        base += len(read)
        added = np.zeros(regions)
        for i in pure:
            added[i] = sum(candidates.shrinks[i].added.values())
        kept = np.concatenate([np.flatnonzero(added), np.arange(regions, regions + len(sizes)), column[split]])
        parts.append((np.full(len(kept), base), kept, np.concatenate([added[added != 0], sizes, whole[split]])))
        bounds.append((np.array([-np.inf]), np.array([np.inf])))
        r, c, v = (np.concatenate([np.asarray(part[k], dtype=dtype) for part in parts])
                   for k, dtype in ((0, np.int64), (1, np.int64), (2, np.float64)))
        self.matrix = coo_array((v, (r, c)), shape=(base + 1, columns)).tocsr()
        self.lower, self.upper = (np.concatenate(side) for side in zip(*bounds, strict=True))
        self.cost = np.concatenate([candidates.cost.astype(np.float64), np.zeros(columns - regions)])
        self.transient, self.regions = candidates.transient, regions

    def solve(self, budget: int, limit: int | None = None, seconds: float = 2.0) -> list[int] | None:
        """Candidate indices minimising the summed cost with kept bytes <= ``budget``; regions rematerialising
        more than ``limit`` are left out. None if the program finds nothing in ``seconds``."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        upper = self.upper.copy()
        upper[-1] = float(budget)
        allowed = np.ones(self.regions) if limit is None else (self.transient <= limit).astype(np.float64)
        high = np.concatenate([allowed, np.ones(len(self.cost) - self.regions)])
        result = milp(self.cost, constraints=LinearConstraint(self.matrix, self.lower, upper),
                      integrality=np.ones(len(self.cost)), bounds=Bounds(np.zeros(len(self.cost)), high),
                      options={"time_limit": seconds, "mip_rel_gap": 1e-2})
        if result.x is None:
            return None
        return [int(i) for i in np.flatnonzero(result.x[:self.regions] > 0.5)]


def solve(candidates: Candidates, budget: int, limit: int | None = None, seconds: float = 2.0) -> list[int] | None:
    """``Program(candidates).solve(budget, limit, seconds)``: one solve."""
    return Program(candidates).solve(budget, limit, seconds)
