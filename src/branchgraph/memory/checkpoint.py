"""Activation checkpointing planned under a memory budget, in eager mode.

``plan`` runs one training forward and records, per storage autograd saves for backward, its size and the
modules that saved it, and per module its input storages and forward MACs. A *region* is a module, an Inception
branch or a run of an ``nn.Sequential``'s children; checkpointing it drops every tensor saved only inside it and
keeps its inputs instead. Regions are added greedily by bytes freed per recomputed MAC until the predicted saved
bytes fit the budget, then any region the budget no longer needs is dropped again. No region may need more than
the budget itself to recompute where that can work (else twice, four times, ... the budget), so the activation
peak stays near the saved bytes plus one region's recomputation.

The chosen regions run under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved, so dropout masks
replay). During the recomputation every BatchNorm's momentum is 0 and its batch counter is restored afterwards,
so the running statistics are updated once per step, as in the plain model. State-dict keys do not change: a
checkpointed module only changes class (to a subclass of its own class whose forward checkpoints it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import heapq
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from branchgraph.errors import ConfigError
from branchgraph.graph.capture import capture, layer_failure
from branchgraph.graph.cost import layer_macs
from branchgraph.graph.memory import _tensors
from branchgraph.graph.structure import find_blocks
from branchgraph.memory.reversible import statistics_frozen

MIB = 2**20
COSTS = ("time", "macs")
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": MIB, "mb": MIB, "mib": MIB,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_budget(text: str | float | int) -> float | int:
    """A budget as given by a user: a fraction in (0, 1] of the plain saved bytes ("0.1"), or bytes
    ("300MiB", "2G", "500000000"). Raises ConfigError naming the accepted forms."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value: float = float(text)
        unit = ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"memory budget {text!r} is neither a fraction like 0.25 nor a size like 300MiB")
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit:
        return int(value * _UNITS[unit])
    if 0 < value <= 1:
        return value
    if value > 1 and value == int(value):
        return int(value)
    raise ConfigError(f"memory budget {text!r} must be a fraction in (0, 1] or a number of bytes")


@dataclass(frozen=True)
class Region:
    """What one checkpoint recomputes: module ``path`` whole, or its children [start, stop) (an nn.Sequential)."""

    path: str
    kind: str  # "module", "branch" or "segment"
    start: int | None = None
    stop: int | None = None

    @property
    def name(self) -> str:
        base = self.path or "<model>"
        return base if self.start is None else f"{base}[{self.start}:{self.stop}]"


@dataclass
class CheckpointPlan:
    """The regions to recompute and what the plan predicts for one training step at ``input_shape``."""

    input_shape: list[int]
    budget_bytes: int
    plain_saved_bytes: int
    saved_bytes: int
    forward_macs: int
    extra_macs: int
    forward_seconds: float  # the profiled forward's time, for the recomputation's share of it
    extra_seconds: float  # recomputed layers' forward time plus the per-region overhead below
    region_overhead_seconds: float
    largest_recompute_bytes: int  # what recomputing the largest region materialises again during backward
    regions: list[Region] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["regions"] = [{"name": r.name, **asdict(r)} for r in self.regions]
        data["saved_fraction"] = self.saved_bytes / self.plain_saved_bytes if self.plain_saved_bytes else 0.0
        data["extra_forward_macs_fraction"] = self.extra_macs / self.forward_macs if self.forward_macs else 0.0
        data["extra_forward_time_fraction"] = (self.extra_seconds / self.forward_seconds if self.forward_seconds
                                               else 0.0)
        return data

    def to_text(self) -> str:
        d = self.to_dict()
        lines = [
            f"input {self.input_shape}: plain saves {self.plain_saved_bytes / MIB:.1f} MiB for backward; "
            f"budget {self.budget_bytes / MIB:.1f} MiB",
            f"plan: {len(self.regions)} checkpointed regions, predicted saved {self.saved_bytes / MIB:.1f} MiB "
            f"({d['saved_fraction']:.1%} of plain), recompute {self.extra_macs / 1e9:.2f} GMACs "
            f"({d['extra_forward_macs_fraction']:.1%} of the forward's MACs, "
            f"{d['extra_forward_time_fraction']:.1%} of its time), largest recomputation "
            f"{self.largest_recompute_bytes / MIB:.1f} MiB",
        ]
        lines += [f"  {r.kind:<8} {r.name}" for r in self.regions]
        return "\n".join(lines)


@dataclass
class _Profile:
    """What one training forward saved, per storage, and what each module read and computed."""

    paths: list[str]
    sizes: np.ndarray  # bytes per storage
    entry_storage: np.ndarray  # (storage, saver module) pairs: storage index ...
    entry_path: np.ndarray  # ... and the saving module's index in ``paths``
    inputs: dict[str, set[int]]  # module path -> storage indices of its tensor inputs
    macs: dict[str, int]  # leaf module path -> forward MACs (all calls)
    seconds: dict[str, float]  # leaf module path -> forward time measured in the profiling step (all calls)
    region_overhead: float  # seconds one checkpointed region adds to a training step, whatever it holds


def _profile(model: nn.Module, example: torch.Tensor) -> _Profile:
    names = {m: n for n, m in model.named_modules()}
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), example)}
    index: dict[int, int] = {}
    sizes: list[int] = []
    keep: list[torch.Tensor] = []  # held so that no storage address is reused while profiling
    pairs: list[tuple[int, int]] = []
    path_index = {p: i for i, p in enumerate(names.values())}
    inputs: dict[str, set[int]] = {}
    macs: dict[str, int] = {}
    seconds: dict[str, float] = {}
    started: list[float] = []
    stack: list[str] = []

    def storage_of(t: torch.Tensor) -> int | None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in excluded or storage.device.type == "meta":
            return None
        if ptr not in index:
            index[ptr] = len(sizes)
            sizes.append(storage.nbytes())
            keep.append(t)
        return index[ptr]

    def pre_hook(module: nn.Module, args: Any) -> None:
        name = names[module]
        stack.append(name)
        found = {s for s in map(storage_of, _tensors(args)) if s is not None}
        inputs.setdefault(name, set()).update(found)
        started.append(time.perf_counter())

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        elapsed = time.perf_counter() - started.pop()
        name = stack.pop()
        ins, outs = list(_tensors(args)), list(_tensors(output))
        if ins and outs and not list(module.children()):
            macs[name] = macs.get(name, 0) + layer_macs(module, ins[0], outs[0])[0]
            seconds[name] = seconds.get(name, 0.0) + elapsed

    def pack(t: torch.Tensor) -> torch.Tensor:
        sid = storage_of(t)
        if sid is not None:
            pairs.append((sid, path_index[stack[-1] if stack else ""]))
        return t

    model.train()
    try:
        model(example)  # warm-up, so that the timed step does not pay first-call costs
    except Exception as exc:  # re-raised naming the innermost layer that was running
        raise layer_failure(model, "", tuple(example.shape), exc) from None
    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    handles += [m.register_forward_hook(post_hook) for m in model.modules()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            try:
                model(example)
            except Exception as exc:  # re-raised naming the innermost layer that was running
                raise layer_failure(model, stack[-1] if stack else "", tuple(example.shape), exc) from None
    finally:
        for h in handles:
            h.remove()
    entries = np.array(sorted(set(pairs)), dtype=np.int64).reshape(-1, 2)
    return _Profile(list(path_index), np.array(sizes, dtype=np.int64), entries[:, 0], entries[:, 1],
                    inputs, macs, seconds, checkpoint_overhead())


@functools.cache
def checkpoint_overhead(repeats: int = 30) -> float:
    """Seconds ``torch.utils.checkpoint`` adds per region and step on this machine (its Python machinery, RNG
    state, recomputation hooks), measured once on a trivial region: median of interleaved timings."""
    x = torch.ones(8, requires_grad=True)

    def plain() -> None:
        torch.relu(x).sum().backward()

    def checkpointed() -> None:
        checkpoint(torch.relu, x, use_reentrant=False, preserve_rng_state=True).sum().backward()

    times: dict[Any, list[float]] = {plain: [], checkpointed: []}
    for _ in range(repeats):
        for run, found in times.items():
            start = time.perf_counter()
            run()
            found.append(time.perf_counter() - start)
    return max(0.0, statistics.median(times[checkpointed]) - statistics.median(times[plain]))


def _within(path: str, members: list[str]) -> bool:
    return any(m == "" or path == m or path.startswith(m + ".") for m in members)


def _subtree_ends(paths: list[str]) -> list[int]:
    """For module paths in pre-order (``named_modules``), the index just past each module's subtree."""
    ends = [len(paths)] * len(paths)
    open_: list[int] = []
    for k, path in enumerate(paths):
        while open_ and not _within(path, [paths[open_[-1]]]):
            ends[open_.pop()] = k
        open_.append(k)
    return ends


def _candidates(model: nn.Module, example: torch.Tensor, prof: _Profile) -> list[tuple[Region, list[str]]]:
    """Every called module (Inception branches marked), and every run of 2+ children of a plain nn.Sequential."""
    gm = capture(model, example).graph_module
    branches = {b.name for block in find_blocks(gm) for b in block.branches} if gm is not None else set()
    found: list[tuple[Region, list[str]]] = []
    for path, module in model.named_modules():
        if path not in prof.inputs:
            continue
        found.append((Region(path, "branch" if path in branches else "module"), [path]))
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            children = [f"{path}.{n}" if path else n for n, _ in module.named_children()]
            for start in range(len(children)):
                for stop in range(start + 2, len(children) + (0 if start == 0 else 1)):
                    found.append((Region(path, "segment", start, stop), children[start:stop]))
    return found


class _Planner:
    """Predicted saved bytes and recompute cost of sets of regions, from one profile."""

    def __init__(self, prof: _Profile, regions: list[tuple[Region, list[str]]], cost: str = "time") -> None:
        self.prof = prof
        self.regions = [r for r, _ in regions]
        n_paths = len(prof.paths)
        self.masks = np.zeros((len(regions), n_paths), dtype=bool)
        leaf_macs = np.array([prof.macs.get(p, 0) for p in prof.paths], dtype=np.int64)
        leaf_seconds = np.array([prof.seconds.get(p, 0.0) for p in prof.paths])
        self.region_inputs: list[np.ndarray] = []
        saved_by = np.zeros(len(prof.sizes), dtype=bool)
        saved_by[prof.entry_storage] = True
        self.saved_storages = saved_by
        index = {p: k for k, p in enumerate(prof.paths)}
        end = _subtree_ends(prof.paths)
        for i, (_, members) in enumerate(regions):
            self.masks[i, index[members[0]]:end[index[members[-1]]]] = True  # pre-order: subtrees are ranges
            self.region_inputs.append(np.array(sorted(prof.inputs.get(members[0], set())), dtype=np.int64))
        self.macs = self.masks.astype(np.int64) @ leaf_macs
        # The objective: measured forward time plus checkpoint's own per-region overhead (memory-bound layers
        # cost time but no MACs; at small batches the overhead dominates), or MACs.
        self.seconds = self.masks.astype(np.float64) @ leaf_seconds + prof.region_overhead
        self.cost = self.seconds if cost == "time" else self.macs.astype(np.float64)
        self.transient = np.array([self._inside_bytes(self.masks[i]) for i in range(len(regions))], dtype=np.int64)
        self.plain = int(prof.sizes[saved_by].sum())

    def _inside_bytes(self, mask: np.ndarray) -> int:
        """Bytes of storages saved only by modules inside ``mask``: what recomputing it materialises again."""
        outside = np.zeros(len(self.prof.sizes), dtype=bool)
        outside[self.prof.entry_storage[~mask[self.prof.entry_path]]] = True
        return int(self.prof.sizes[self.saved_storages & ~outside].sum())

    def saved(self, chosen: list[int]) -> int:
        covered = np.zeros(len(self.prof.paths), dtype=bool)
        for i in chosen:
            covered |= self.masks[i]
        kept = np.zeros(len(self.prof.sizes), dtype=bool)
        kept[self.prof.entry_storage[~covered[self.prof.entry_path]]] = True
        for i in chosen:
            kept[self.region_inputs[i]] = True
        return int(self.prof.sizes[kept].sum())

    def _merge(self, chosen: list[int], i: int) -> list[int] | None:
        """``chosen`` with region i added (replacing the regions it contains); None if it overlaps one partly."""
        mask = self.masks[i]
        result = []
        for j in chosen:
            other = self.masks[j]
            if not (mask & other).any():
                result.append(j)
            elif (other & ~mask).any():
                return None  # i is inside j, or they overlap partly
        return [*result, i]

    def choose(self, budget: int) -> tuple[list[int], int]:
        """The cheapest plan found whose regions each recompute at most the budget; where no such plan fits,
        the limit on one region's recomputation doubles until one does (or no limit is left)."""
        limit = budget
        while True:
            chosen, saved = self._choose(budget, limit)
            if saved <= budget or limit >= self.plain:
                return chosen, saved
            limit *= 2

    def _choose(self, budget: int, limit: int) -> tuple[list[int], int]:
        """Greedy by bytes freed per unit of recompute cost until the budget holds, then drop unneeded regions.

        Lazy greedy: a region's score from an earlier state is kept in a heap and re-evaluated only when it
        reaches the top (what a region frees only shrinks as others are chosen), so deep nets with thousands
        of candidate regions plan in seconds."""
        chosen: list[int] = []
        saved = self.plain
        heap = [(-math.inf, i) for i in range(len(self.regions)) if self.transient[i] <= limit]
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


def plan(
    model: nn.Module, example: torch.Tensor, budget: float | int | str, *, cost: str = "time",
    inplace: bool = False,
) -> tuple[nn.Module, CheckpointPlan]:
    """Plan checkpointing of ``model`` (trained on batches shaped like ``example``) so that the activations saved
    for backward fit ``budget`` (a fraction of the plain model's, or bytes) with the least recomputation: of
    forward time measured per layer (``cost="time"``) or of MACs (``cost="macs"``, machine-independent).

    Returns the model set up to train with the plan (a copy unless ``inplace``) and the plan. Any budget can be
    met: at worst the whole model is one region and only its input is kept.
    """
    if cost not in COSTS:
        raise ConfigError(f"checkpoint plan cost must be one of {', '.join(COSTS)}; got {cost!r}")
    wanted = parse_budget(budget)
    with torch.random.fork_rng(devices=[]):  # the profiling step's dropout must not move the caller's RNG
        prof = _profile(copy.deepcopy(model), example)
    planner = _Planner(prof, _candidates(model, example, prof), cost)
    budget_bytes = int(wanted * planner.plain) if isinstance(wanted, float) else wanted
    chosen, saved = planner.choose(budget_bytes)
    order = {r: i for i, r in enumerate(planner.regions)}
    regions = sorted((planner.regions[i] for i in chosen), key=order.__getitem__)
    result = CheckpointPlan(
        list(example.shape), budget_bytes, planner.plain, saved, int(sum(prof.macs.values())),
        int(planner.macs[chosen].sum()), float(sum(prof.seconds.values())), float(planner.seconds[chosen].sum()),
        prof.region_overhead,
        int(planner.transient[chosen].max()) if chosen else 0, regions,
    )
    target = model if inplace else copy.deepcopy(model)
    return apply_plan(target, result), result


def _contexts(modules: list[nn.Module]) -> tuple[contextlib.AbstractContextManager[None], ...]:
    return contextlib.nullcontext(), statistics_frozen(modules)


def _wants_checkpoint(module: nn.Module, args: tuple[Any, ...]) -> bool:
    return torch.is_grad_enabled() and (
        any(t.requires_grad for t in _tensors(args)) or any(p.requires_grad for p in module.parameters()))


class _Checkpointed(nn.Module):
    """Mixed in before a module's class: its forward runs under torch.utils.checkpoint while autograd records."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = super().forward
        if not _wants_checkpoint(self, args):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True,
                          context_fn=partial(_contexts, [self]), **kwargs)


def _run(modules: list[nn.Module], x: Any) -> Any:
    for module in modules:
        x = module(x)
    return x


class _Segmented(nn.Sequential):
    """Mixed in before an nn.Sequential's class: the runs of children in ``_checkpoint_runs`` are checkpointed."""

    _checkpoint_runs: dict[int, int]

    def forward(self, x: Any) -> Any:
        children = list(self)
        i = 0
        while i < len(children):
            stop = self._checkpoint_runs.get(i)
            if stop is not None and _wants_checkpoint(self, (x,)):
                run = children[i:stop]
                x = checkpoint(_run, run, x, use_reentrant=False, preserve_rng_state=True,
                               context_fn=partial(_contexts, run))
                i = stop
            else:
                x = children[i](x)
                i += 1
        return x


_CLASSES: dict[tuple[type, type], type] = {}


def _retype(module: nn.Module, mixin: type) -> None:
    base = type(module)
    if issubclass(base, mixin):
        return
    if (base, mixin) not in _CLASSES:
        prefix = "Checkpointed" if mixin is _Checkpointed else "Segmented"
        _CLASSES[base, mixin] = type(f"{prefix}{base.__name__}", (mixin, base), {"__module__": __name__})
    module.__class__ = _CLASSES[base, mixin]


def apply_plan(model: nn.Module, plan: CheckpointPlan) -> nn.Module:
    """Set ``model`` (in place) up to checkpoint the plan's regions; returns it."""
    for region in plan.regions:
        module = model.get_submodule(region.path)
        if region.start is None:
            _retype(module, _Checkpointed)
        else:
            _retype(module, _Segmented)
            runs = module.__dict__.setdefault("_checkpoint_runs", {})
            runs[region.start] = region.stop
    return model


def remove_plan(model: nn.Module) -> nn.Module:
    """Undo ``apply_plan`` in place (every module back to its own class), e.g. before pickling the model."""
    for module in model.modules():
        for mixin in (_Checkpointed, _Segmented):
            if isinstance(module, mixin):
                module.__class__ = type(module).__mro__[2]
        module.__dict__.pop("_checkpoint_runs", None)
    return model
