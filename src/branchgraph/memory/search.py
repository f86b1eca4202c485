"""Which regions to recompute: predicted kept bytes, recomputation and peak of sets of regions, and the choice
(greedy, with the integer program of ``exact`` beside it).

A *unit* is what the profile attributes saved tensors to (a graph node, or a module); a region is a set of units
(a contiguous range). Checkpointing regions drops every storage saved only by units inside them and keeps the
regions' inputs instead. A region may instead *shrink* storages (an exact saving op standing in for a unit): it
covers no units and costs its measured overhead.
"""

from __future__ import annotations

import heapq
import os

import numpy as np

from branchgraph.errors import ConfigError
from branchgraph.memory import ilp as exact
from branchgraph.memory.problem import Saves, Shrink

EXACT_SECONDS = 30.0  # the integer program's time limit per plan at most; it mostly stops sooner, at a 1 % gap
EXACT_FORWARDS = 60  # ... and at least 2 s, up to this many profiled forwards' time: a big net's program needs more
# (channels_last googlenet-d2l b128 at 10 % kept: 11 s; cut at 2 s, its best plan recomputed 1.67x the forward's
# time, not 0.74x), a small net's planning stays quick
SECONDS_ENV = "BRANCHGRAPH_PLAN_SECONDS"  # a fixed time limit per solve instead (quick plans, or thorough ones)
EXACT_LIMITS = 3  # limits on one region's recomputation the integer program is run at for a peak budget
REGION_SHARE = 0.4  # a kept budget's regions materialise at most this share of plain's saved bytes again, unless
# no plan with smaller regions fits (larger ones would hold most of what checkpointing freed at once)


def _merged(ops: list[Shrink]) -> dict[int, int]:
    """Unit -> bytes the saving ops keep instead (a unit replaced by two options counted once)."""
    merged: dict[int, int] = {}
    for op in ops:
        merged.update(op.added)
    return merged


def _below(added: dict[int, int], before: int) -> int:
    """Bytes of ``added`` kept by units < ``before``."""
    return sum(v for k, v in added.items() if k < before)


class Planner:
    """Predicted saved bytes, recompute cost and transient bytes of sets of regions, from one profile."""

    def __init__(self, saves: Saves, masks: np.ndarray, inputs: list[np.ndarray], cost: np.ndarray,
                 shrinks: list[Shrink | None] | None = None, inner: list[list[int]] | None = None,
                 recomputed_sizes: np.ndarray | None = None, forward_seconds: float | None = None) -> None:
        self.saves, self.masks, self.inputs, self.cost = saves, masks, inputs, cost
        self.forward_seconds = forward_seconds
        # What a recomputation materialises, and a region's input is kept as, per storage: as saved, unless other
        # saves are kept narrower (lossy); a narrowed storage a region reads is kept in both forms.
        self.recomputed_sizes = saves.sizes if recomputed_sizes is None else recomputed_sizes
        self.split = self.recomputed_sizes != saves.sizes
        self.any_split = bool(self.split.any())
        self.shrinks = shrinks or [None] * len(masks)
        self.inner = inner or [[] for _ in masks]
        self.bounds = [(int(u[0]), int(u[-1]) + 1) if len(u) else (0, 0) for u in map(np.flatnonzero, masks)]
        self.saved_storages = np.zeros(len(saves.sizes), dtype=bool)
        self.saved_storages[saves.entry_storage] = True
        self.plain = saves.total()
        inside = [self._inside(m) for m in masks]
        self.transient = np.array([self._recomputed_bytes(i, s) for i, s in enumerate(inside)], dtype=np.int64)
        full = self.recomputed_sizes
        self.largest = np.array([max(full[s].max(initial=0), full[i].max(initial=0))
                                 for s, i in zip(inside, inputs, strict=True)], dtype=np.int64)
        # Each region's score alone (bytes freed per unit of cost), where every greedy choice starts.
        self.alone = np.array([(self.plain - self.saved([i])) / max(float(self.cost[i]), 1e-12)
                               for i in range(len(masks))])
        # Candidate sets the greedy choice is run on, cheapest result kept: a greedy order that takes saving ops
        # first can end dearer than recomputation alone.
        plain = np.array([s is None and not ops for s, ops in zip(self.shrinks, self.inner, strict=True)])
        apart = np.array([not ops for ops in self.inner])
        self.families = [np.ones(len(masks), dtype=bool)]
        for family in (apart, plain):
            if family.any() and not any(np.array_equal(family, f) for f in self.families):
                self.families.append(family)
        self._chosen: dict[tuple[int, int, int], tuple[list[int], int]] = {}
        self._program: exact.Program | None = None
        self._solved: dict[tuple[int, int], list[int] | None] = {}

    def exact_seconds(self) -> float:
        """The integer program's time limit per solve: ``$BRANCHGRAPH_PLAN_SECONDS`` if set, else up to
        EXACT_FORWARDS profiled forwards' time within 2 s..EXACT_SECONDS (EXACT_SECONDS without a forward time)."""
        given = os.environ.get(SECONDS_ENV)
        if given:
            try:
                seconds = float(given)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds < float("inf"):
                raise ConfigError(f"{SECONDS_ENV} must be a positive number of seconds; got {given!r}")
            return seconds
        if self.forward_seconds is None:
            return EXACT_SECONDS
        return min(EXACT_SECONDS, max(2.0, EXACT_FORWARDS * self.forward_seconds))

    def candidates(self) -> exact.Candidates:
        """What the integer program chooses from."""
        return exact.Candidates(self.saves, self.masks, self.inputs, self.cost, self.shrinks, self.transient,
                                self.recomputed_sizes)

    def exact(self, budget: int, limit: int) -> list[int] | None:
        """The integer program's plan for ``budget`` and ``limit`` (its constraints built once, each solve
        remembered: a peak budget asks for the same ones again)."""
        if self._program is None:
            self._program = exact.Program(self.candidates())
        key = (budget, limit)
        if key not in self._solved:
            self._solved[key] = self._program.solve(budget, limit=limit, seconds=self.exact_seconds())
        return self._solved[key]

    def _recomputed_bytes(self, i: int, inside: np.ndarray) -> int:
        """Bytes region i's recomputation saves: its ``inside`` storages, those its saving ops no longer save
        replaced by what the ops keep."""
        ops = [op for op in (self.shrinks[j] for j in self.inner[i]) if op is not None]
        sizes = self.recomputed_sizes
        if not ops:
            return int(sizes[inside].sum())
        rebuilt = max((b for op in ops for b in op.rebuilt.values()), default=0)
        still = np.ones(len(self.saves.entry_storage), dtype=bool)
        for op in ops:
            still[op.entries] = False
        kept = np.zeros(len(self.saves.sizes), dtype=bool)
        kept[self.saves.entry_storage[still]] = True
        return int(sizes[inside & kept].sum()) + sum(_merged(ops).values()) + rebuilt

    def _inside(self, mask: np.ndarray) -> np.ndarray:
        """Storages saved only by units inside ``mask`` (bool per storage): what recomputing it materialises
        again."""
        outside = np.zeros(len(self.saves.sizes), dtype=bool)
        outside[self.saves.entry_storage[~mask[self.saves.entry_unit]]] = True
        return self.saved_storages & ~outside

    def _state(self, chosen: list[int]) -> tuple[np.ndarray, np.ndarray, dict[int, int], dict[int, int]]:
        """(units covered by chosen regions, entries still saved, unit -> bytes the chosen saving ops keep
        instead and unit -> bytes their backward rebuilds, of the units outside the regions: a ReLU+pool op
        whose ReLU a region recomputes still keeps the pool's offsets)."""
        covered = np.zeros(self.masks.shape[1], dtype=bool)
        for i in chosen:
            a, b = self.bounds[i]
            covered[a:b] = True
        active = ~covered[self.saves.entry_unit]
        ops = [shrink for i in chosen if (shrink := self.shrinks[i]) is not None]
        if ops:
            active[np.concatenate([op.entries for op in ops])] = False
        added = {k: v for k, v in _merged(ops).items() if not covered[k]}
        rebuilt = {k: v for op in ops for k, v in op.rebuilt.items() if not covered[k]}
        return covered, active, added, rebuilt

    def _kept_sizes(self, chosen: list[int], active: np.ndarray) -> np.ndarray:
        """Bytes kept per storage: saved by an active entry, or read by a chosen region (a narrowed storage
        read by a region is kept whole, and narrowed as well if an active entry saves it)."""
        by_entry = np.zeros(len(self.saves.sizes), dtype=bool)
        by_entry[self.saves.entry_storage[active]] = True
        by_region = np.zeros(len(self.saves.sizes), dtype=bool)
        for i in chosen:
            by_region[self.inputs[i]] = True
        kept = np.where(by_entry | by_region, self.saves.sizes, 0)
        if self.any_split:  # exact plans (nothing narrowed) skip this on the greedy's hot path
            both = self.split & by_region
            kept[both] = self.recomputed_sizes[both] + np.where(by_entry[both], self.saves.sizes[both], 0)
        return kept

    def saved(self, chosen: list[int]) -> int:
        _, active, added, _ = self._state(chosen)
        return int(self._kept_sizes(chosen, active).sum()) + sum(added.values())

    def _merge(self, chosen: list[int], i: int) -> list[int] | None:
        """``chosen`` with region i added (replacing the regions it contains); None if it overlaps one partly.
        Regions are unit ranges (``bounds``), so this compares integers."""
        a, b = self.bounds[i]
        if a == b:
            return [*chosen, i]  # covers no units
        result = []
        for j in chosen:
            c, d = self.bounds[j]
            if d <= a or b <= c or c == d:
                result.append(j)
            elif not (a <= c and d <= b):
                return None  # i is inside j, or they overlap partly
        return [*result, i]

    def choose(self, budget: int, limit: int | None = None) -> tuple[list[int], int]:
        """The cheapest plan found (greedy over each candidate family, or the integer program's, ``exact``, where
        cheaper) whose regions each materialise at most ``limit`` bytes again (default: the budget); where no
        such plan fits, the limit doubles until one does (or no limit is left). Without a given limit, doubling
        goes on up to REGION_SHARE of the plain saved bytes, keeping the cheapest plan: larger regions often
        recompute less (channels_last googlenet-d2l at 10 %: 0.80 of the forward's time instead of 1.84)."""
        fixed = limit is not None
        limit = budget if limit is None else limit
        best: tuple[list[int], int, int] | None = None
        while True:
            chosen, saved = self._cheapest(budget, limit)
            if saved <= budget and (best is None or self.cost[chosen].sum() < self.cost[best[0]].sum()):
                best = (chosen, saved, limit)
            if limit >= self.plain or (best is not None and (fixed or 2 * limit > REGION_SHARE * self.plain)):
                break
            limit = max(2 * limit, 1)
        chosen, saved, limit = best if best is not None else (chosen, saved, limit)
        solved = self.exact(budget, limit)
        if solved is not None and self.saved(solved) <= budget and (
                saved > budget or self.cost[solved].sum() < self.cost[chosen].sum()):
            return solved, self.saved(solved)
        return chosen, saved

    def _cheapest(self, budget: int, limit: int) -> tuple[list[int], int]:
        """The cheapest of the greedy choices over each candidate family that fits the budget (else the one
        keeping least)."""
        found = [self._choose(budget, limit, family) for family in range(len(self.families))]
        return min(found, key=lambda c: (c[1] > budget, float(self.cost[c[0]].sum()) if c[1] <= budget else c[1]))

    def peak(self, chosen: list[int], grad: int, in_flight: int) -> int:
        """Predicted peak of a step: the kept bytes at the forward's end plus ``in_flight`` (the largest
        activation's gradient), or, recomputing a region in backward, what is still kept from before it plus its
        recomputation plus ``grad`` (parameter gradients) plus three gradients the size of the region's largest
        tensor (its output's, the one being computed and one inside it; at most ``in_flight`` each; with two,
        measured peaks went up to 12 % of plain's above the prediction), or, in the backward of a saving op
        outside the regions, what is kept from before it plus what it rebuilds (a pool's int64 indices, 8 bytes
        per output element) plus ``grad``, its output's gradient (4 bytes per output element) and its input's
        (up to 16, a stride-2 window's, and at most ``in_flight``)."""
        _, active, added, rebuilt = self._state(chosen)
        never = np.iinfo(np.int64).max
        first = np.full(len(self.saves.sizes), never)
        np.minimum.at(first, self.saves.entry_storage[active], self.saves.entry_unit[active])
        spans = []
        for i in chosen:
            start, stop = self.bounds[i]
            if stop > start:
                first[self.inputs[i]] = np.minimum(first[self.inputs[i]], start)
                spans.append((i, stop))
        sizes = self._kept_sizes(chosen, active)
        found = int(sizes[first < never].sum()) + sum(added.values()) + in_flight
        for i, stop in spans:
            before = int(sizes[first < stop].sum()) + _below(added, stop)
            gradients = 3 * min(int(self.largest[i]), in_flight)
            found = max(found, before + int(self.transient[i]) + grad + gradients)
        for unit, indices in rebuilt.items():
            before = int(sizes[first < unit + 1].sum()) + _below(added, unit + 1)
            found = max(found, before + indices + grad + indices // 2 + min(2 * indices, in_flight))
        return found

    def peak_options(self, peak: int, grad: int, in_flight: int, kept: int | None = None
                     ) -> list[tuple[float, list[int], int]]:
        """Distinct plans for a peak budget, cheapest first, as (cost, regions, kept bytes): greedy choices over
        limits on one region's recomputation (spread over the regions' values, and the kept budget doubled as
        ``choose`` tries), each with the kept budgets that leave room for it by ``peak()``
        (and with the least kept), within ``kept`` if given. The caller measures them: the prediction is an
        estimate."""
        found: dict[tuple[int, ...], tuple[float, list[int], int]] = {}
        cap = self.plain if kept is None else kept
        doubling = [cap * 2**k for k in range(64) if cap * 2**k < peak] if cap else []  # as ``choose`` tries
        for limit in sorted({*self._limits(peak), *doubling}):
            for budget in {cap, min(cap, peak - limit - grad - in_flight), min(cap, peak - limit - in_flight), 0}:
                for family in range(len(self.families)):
                    chosen, saved = self._choose(max(budget, 0), limit, family)
                    if saved <= cap:
                        found.setdefault(tuple(sorted(chosen)), (float(self.cost[chosen].sum()), chosen, saved))
        # The integer program beside the greedy at limits spread over those that leave room for the region: under
        # a tight limit the greedy can end at several times the program's cost (channels_last googlenet-d2l). Each
        # limit is solved at the kept budget ``peak()`` leaves room for and at the one that ignores the gradients
        # (the prediction counts them in full: channels_last googlenet-d2l's plan at 10 % kept and a 35 % peak
        # predicted 45 % of plain's peak and measured 31 %, at 1.27x the step time; the first budget's, 1.34x).
        for limit in self._roomy(peak - grad - in_flight):
            for budget in sorted({min(cap, peak - limit - grad - in_flight), min(cap, peak - limit)}):
                solved = self.exact(budget, limit)
                if solved is not None and (saved := self.saved(solved)) <= budget:
                    found.setdefault(tuple(sorted(solved)), (float(self.cost[solved].sum()), solved, saved))
        return sorted(found.values(), key=lambda option: option[0])

    def _roomy(self, below: int) -> list[int]:
        """Up to EXACT_LIMITS limits on one region's recomputation for the integer program: the largest region
        value below ``below``, and the largest at most a half and a quarter of it (the cheapest plans have the
        largest regions; smaller ones are for when those measure over)."""
        values = np.unique(self.transient[(self.transient > 0) & (self.transient < below)])
        if not len(values):
            return []
        picks = {int(values[np.searchsorted(values, values[-1] / 2**k, side="right") - 1])
                 for k in range(EXACT_LIMITS) if values[0] <= values[-1] / 2**k}
        return sorted(picks, reverse=True)

    def smallest_peak(self, grad: int, in_flight: int) -> int:
        """The least predicted peak any limit on one region's recomputation gives."""
        return min(self.peak(self._choose(0, limit)[0], grad, in_flight) for limit in self._limits(self.plain + 1))

    def _limits(self, below: int, count: int = 10) -> list[int]:
        """Up to ``count`` limits on one region's recomputation, spread geometrically over the regions' values."""
        values = np.unique(self.transient[(self.transient > 0) & (self.transient < below)])
        if len(values) > count:
            picks = np.searchsorted(values, np.geomspace(values[0], values[-1], count))
            values = values[np.unique(np.minimum(picks, len(values) - 1))]
        return [0, *map(int, values)]

    def _choose(self, budget: int, limit: int, family: int = 0) -> tuple[list[int], int]:
        """Greedy by bytes freed per unit of recompute cost (over the candidates in ``families[family]``, the
        first being all) until the budget holds, then drop unneeded regions; remembered per arguments.

        Lazy greedy: a region's score from an earlier state (at first, ``alone``) is kept in a heap and
        re-evaluated only when it reaches the top (what a region frees only shrinks as others are chosen), so
        deep nets with thousands of candidate regions plan in seconds."""
        key = (budget, limit, family)
        if key not in self._chosen:
            self._chosen[key] = self._greedy(budget, limit, self.families[family])
        return self._chosen[key]

    def _greedy(self, budget: int, limit: int, family: np.ndarray) -> tuple[list[int], int]:
        chosen: list[int] = []
        saved = self.plain
        heap = [(-self.alone[i], i) for i in range(len(self.masks)) if self.transient[i] <= limit and family[i]]
        heapq.heapify(heap)
        while saved > budget and heap:
            _, i = heapq.heappop(heap)
            merged = self._merge(chosen, i)
            if merged is None:
                continue  # inside or across a chosen region; chosen regions only grow, so for good
            freed = saved - self.saved(merged)
            if freed <= 0:
                continue
            score = freed / max(float(self.cost[merged].sum() - self.cost[chosen].sum()), 1e-12)
            if heap and score < -heap[0][0]:
                heapq.heappush(heap, (-score, i))
                continue
            chosen, saved = merged, saved - freed
        for i in sorted(chosen, key=lambda j: -self.cost[j]):
            rest = [j for j in chosen if j != i]
            if self.saved(rest) <= budget:
                chosen = rest
        return chosen, self.saved(chosen)
