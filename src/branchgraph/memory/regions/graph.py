"""Checkpoint regions found in the captured fx graph, whatever the module nesting.

The graph's compute nodes (call_module/call_function/call_method) in order are the *units*. A *cut point* is a
unit after which a single value is live (all data flows through it: the joins between blocks, every layer of a
chain). Candidate regions are the ranges between any two cut points, and every short range of units (a branch,
a BatchNorm+ReLU before a convolution): a range's inputs are the values defined before it and used in it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from branchgraph.graph.record import SavedTensors, StorageTable, leaf_macs, tensors
from branchgraph.graph.tracing import layer_failure, node_module, symbolic_trace
from branchgraph.memory import lossy, saving_ops
from branchgraph.memory.problem import Problem, Region, Saves, Shrink
from branchgraph.memory.regions import timing as unit_timing

COMPUTE = ("call_module", "call_function", "call_method")
SHORT = 12  # longest non-cut range considered, in units (an Inception branch, a norm-act-conv chain)
MAX_SPAN = 64  # most cut-to-cut intervals one range spans (besides the whole graph): deep nets stay quick


def units_of(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in COMPUTE]


@dataclass
class GraphProfile:
    """One profiled training forward of a traced graph: per unit, what it saved, read, computed and cost."""

    names: list[str]  # unit node names, in order
    modules: list[str]  # innermost module path of each unit
    saves: Saves
    out_storages: list[list[int]]  # per unit: storages of its tensor outputs
    pre_saves: np.ndarray  # unit saves only its inputs and parameters: recomputation stops before running it
    seconds: np.ndarray
    macs: np.ndarray
    value_users: list[list[int]]  # per unit: the units that read its output (len(units) for the graph output)
    args: list[list[int]]  # per unit: the units whose outputs it reads (-1 for a placeholder)
    changes: list[list[int]]  # per unit: the values (units; -1 the graph input) whose storage it changed in place
    element: np.ndarray  # per storage: bytes per element
    integer: np.ndarray  # per storage: holds integers (indices)
    narrowable: np.ndarray  # per storage: lossy saves would keep it in bf16 (``lossy.narrows``)
    widths: list[int]  # per unit: its first tensor input's last dimension
    saving_seconds: np.ndarray  # per unit: what its exact saving op adds to a step (0: none applies)

    @functools.cached_property
    def saving(self) -> np.ndarray:
        """Per unit: whether it saved any storage for backward."""
        found = np.zeros(len(self.names), dtype=bool)
        found[self.saves.entry_unit] = True
        return found

    @functools.cached_property
    def changed_from(self) -> list[frozenset[int]]:
        """Per unit k: the values changed in place by unit k or any later one (a range starting at k must not
        read them: its recomputation would see them changed)."""
        found: list[frozenset[int]] = [frozenset()] * (len(self.names) + 1)
        for k in range(len(self.names) - 1, -1, -1):
            found[k] = found[k + 1] | frozenset(self.changes[k])
        return found


class _Recorder(fx.Interpreter):
    """Runs the graph recording, per unit, the storages autograd saves, outputs, time and MACs."""

    def __init__(self, gm: fx.GraphModule, table: StorageTable) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.table = table
        self.position = {n: i for i, n in enumerate(units_of(gm))}
        count = len(self.position)
        self.current = -1
        self.outs: list[list[int]] = [[] for _ in range(count)]
        self.ins: list[set[int]] = [set() for _ in range(count)]
        self.widths = [0] * count
        self.macs = np.zeros(count, dtype=np.int64)
        self.out_ptrs: list[set[int]] = [set() for _ in range(count)]
        self.changed_ptrs: list[set[int]] = [set() for _ in range(count)]

    def run_node(self, n: fx.Node) -> Any:
        k = self.position.get(n, -1)
        self.current = k
        if k < 0:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        inputs = list(tensors((args, kwargs)))
        self.ins[k] = {s for s in map(self.table.id, inputs) if s is not None}
        if inputs:
            self.widths[k] = inputs[0].shape[-1] if inputs[0].dim() else 1
        versions = [(t, t._version) for t in inputs]
        result = getattr(self, n.op)(n.target, args, kwargs)
        # an in-place op (ReLU(inplace=True), x += y, a view's relu_) bumps its storage's version counter
        self.changed_ptrs[k] = {t.untyped_storage().data_ptr() for t, v in versions if t._version != v}
        outs = list(tensors(result))
        self.out_ptrs[k] = {t.untyped_storage().data_ptr() for t in outs}
        self.outs[k] = [s for s in map(self.table.id, outs) if s is not None]
        if n.op == "call_module":
            macs = leaf_macs(self.module.get_submodule(str(n.target)), (args, kwargs), result)
            self.macs[k] = 0 if macs is None else macs[0]
        return result


def profile_graph(gm: fx.GraphModule, model: nn.Module, example: torch.Tensor, repeats: int = 3,
                  saving: bool = True) -> GraphProfile:
    """One warm-up and one recorded training forward of ``gm`` (whose parameters are ``model``'s), then
    ``repeats`` timed ones (``unit_timing``: the recording keeps every storage alive, which would skew times),
    timing the saving ops too where ``saving``."""
    table = StorageTable([*gm.parameters(), *gm.buffers(), example], flag=lossy.narrows)
    gm.train()
    recorder = _Recorder(gm, table)
    saved = SavedTensors(table, lambda: recorder.current if recorder.current >= 0 else None)
    try:
        fx.Interpreter(gm).run(example)  # warm-up: the timed run must not pay first-call costs
        with saved:
            recorder.run(example)
    except Exception as exc:  # re-raised naming the layer whose node failed
        node = next((n for n, k in recorder.position.items() if k == recorder.current), None)
        raise layer_failure(model, node_module(node) if node else "", tuple(example.shape), exc) from None
    units = units_of(gm)
    pairs = saved.entries()
    table.kept = None
    seconds, saving_seconds = unit_timing.time_units(gm, units, example, repeats, saving)
    saved_by: list[set[int]] = [set() for _ in units]
    for s, k in pairs:
        saved_by[k].add(int(s))
    position = recorder.position
    users = [[position.get(u, len(units)) for u in n.users] for n in units]
    args = [[position.get(a, -1) for a in n.all_input_nodes if a.op != "get_attr"] for n in units]
    holders: dict[int, list[int]] = {example.untyped_storage().data_ptr(): [-1]}  # storage -> values on it
    for k, ptrs in enumerate(recorder.out_ptrs):
        for ptr in ptrs:
            holders.setdefault(ptr, []).append(k)
    changes = [sorted({j for ptr in ptrs for j in holders.get(ptr, [])}) for ptrs in recorder.changed_ptrs]
    return GraphProfile(
        names=[n.name for n in units], modules=[node_module(n) for n in units],
        saves=Saves(np.array(table.sizes, dtype=np.int64), pairs[:, 0], pairs[:, 1]), out_storages=recorder.outs,
        pre_saves=np.array([bool(saved_by[k]) and saved_by[k] <= recorder.ins[k] for k in range(len(units))]),
        seconds=seconds, macs=recorder.macs, value_users=users, args=args, changes=changes,
        element=np.array(table.element, dtype=np.int64), integer=np.array(table.integer, dtype=bool),
        narrowable=np.array(table.flagged, dtype=bool), widths=recorder.widths, saving_seconds=saving_seconds)


@dataclass(frozen=True)
class Range:
    """Units [start, stop) run as one checkpointed region, and the units whose outputs are its inputs."""

    start: int
    stop: int
    inputs: tuple[int, ...]


def cut_points(prof: GraphProfile) -> list[int]:
    """Units after which exactly one value is live (-1: before the first unit, when one input is read)."""
    count = len(prof.names)
    last = {k: max(users, default=k) for k, users in enumerate(prof.value_users)}
    last[-1] = max((k for k, readers in enumerate(prof.args) if -1 in readers), default=-1)
    diff = np.zeros(count + 2, dtype=np.int64)  # diff[k + 1]: change of the values live just after unit k
    for value, end in last.items():
        if end > value:
            diff[value + 1] += 1
            diff[min(end, count) + 1] -= 1
    live = np.cumsum(diff)
    return [k for k in range(-1, count - 1) if live[k + 1] == 1]


def _inputs(prof: GraphProfile, start: int, stop: int) -> tuple[int, ...] | None:
    """The values a range reads from before it (units, -1 for the graph input); None if the range or anything
    after it changes one of them in place (checkpoint keeps its inputs to recompute from them in backward)."""
    found: dict[int, None] = {}
    changed = prof.changed_from[start]
    for k in range(start, stop):
        outside = [a for a in prof.args[k] if a < start]
        if any(a in changed for a in outside):
            return None
        found.update(dict.fromkeys(outside))
    return tuple(found)


def candidate_ranges(prof: GraphProfile) -> list[Range]:
    """Ranges between any two cut points, and every range of at most SHORT units that saves something."""
    saves_any = prof.saving
    found: dict[tuple[int, int], Range] = {}
    cuts = cut_points(prof)
    ends = [*cuts[1:], len(prof.names) - 1] if cuts else []
    spans = [(a, b) for i, a in enumerate(cuts) for b in ends[i:i + MAX_SPAN]]
    for a, b in [*spans, (-1, len(prof.names) - 1)]:
        inputs = _inputs(prof, a + 1, b + 1)
        if inputs is not None and saves_any[a + 1:b + 1].any():
            found[a + 1, b + 1] = Range(a + 1, b + 1, inputs)
    for start in range(len(prof.names)):
        for stop in range(start + 1, min(start + SHORT, len(prof.names)) + 1):
            if (start, stop) in found or not saves_any[start:stop].any():
                continue
            inputs = _inputs(prof, start, stop)
            if inputs is None:
                break  # longer ranges from here change the same input
            found[start, stop] = Range(start, stop, inputs)
    return list(found.values())


def range_storages(prof: GraphProfile, rng: Range) -> np.ndarray:
    """Storages of a range's inputs (what checkpointing it keeps alive)."""
    return np.array(sorted({s for a in rng.inputs if a >= 0 for s in prof.out_storages[a]}), dtype=np.int64)


def range_seconds(prof: GraphProfile, rng: Range) -> float:
    """Recomputation time of a range: its units up to the last that saves something; that last one is skipped
    when it saves only its inputs (non-reentrant checkpoint stops as soon as every saved tensor is back)."""
    saving = np.flatnonzero(prof.saving[rng.start:rng.stop])
    if not len(saving):
        return 0.0
    last = rng.start + int(saving[-1])
    return float(prof.seconds[rng.start:last].sum() + (0.0 if prof.pre_saves[last] else prof.seconds[last]))


def trace(model: nn.Module) -> fx.GraphModule | None:
    """``model`` traced by torch.fx, sharing its modules; None where fx cannot trace it."""
    try:
        return symbolic_trace(model, whole_autograd=True)
    except Exception:  # any tracing failure means: plan on module regions instead
        return None


@dataclass
class SavingOption:
    """Units replaced by their saving ops (``added``: unit -> bytes it keeps instead): the (unit, storage) saves
    ``pairs`` are no longer made, at ``seconds``. ``unit`` is the first replaced unit, ``kind`` what it is;
    ``rebuilt``: unit -> bytes its backward materialises for a moment (a pool's int64 indices)."""

    unit: int
    kind: str
    pairs: list[tuple[int, int]]
    added: dict[int, int]
    seconds: float
    rebuilt: dict[int, int]


def saving_options(gm: fx.GraphModule, prof: GraphProfile) -> list[SavingOption]:
    """Where exact saving ops shrink what is kept: each max pool keeps 1-2 byte offsets instead of its int64
    indices and its input; each ReLU whose output only it (and max pools, replaced with it) keeps, a 1-byte
    mask. Priced by what each adds to a step, measured in place (``prof.saving_seconds``)."""
    nodes = units_of(gm)
    kinds = [saving_ops.kind(gm, node) for node in nodes]
    savers: dict[int, list[int]] = {}
    for s, k in zip(prof.saves.entry_storage.tolist(), prof.saves.entry_unit.tolist(), strict=True):
        savers.setdefault(s, []).append(k)
    pools: dict[int, SavingOption] = {}
    for k, node in enumerate(nodes):
        if kinds[k] != "max_pool":
            continue
        mine = [s for s in savers if k in savers[s]]
        offsets = sum(int(prof.saves.sizes[s]) for s in mine if prof.integer[s])
        added = offsets // (8 // saving_ops.offset_bytes(gm, node, prof.widths[k]))
        if mine:
            pools[k] = SavingOption(k, "max_pool", [(k, s) for s in mine], {k: added},
                                    float(prof.saving_seconds[k]), {k: offsets})
    found = list(pools.values())
    for k in range(len(nodes)):
        if kinds[k] != "relu":
            continue
        mine = [s for s in prof.out_storages[k] if k in savers.get(s, []) and not prof.integer[s]
                and all(j == k or j in pools for j in savers[s])]
        if not mine:
            continue
        partners = sorted({j for s in mine for j in savers[s] if j != k})
        pairs = [(k, s) for s in mine] + [pair for j in partners for pair in pools[j].pairs]
        added = {k: sum(int(prof.saves.sizes[s] // prof.element[s]) for s in mine)}
        rebuilt: dict[int, int] = {}
        for j in partners:
            added.update(pools[j].added)
            rebuilt.update(pools[j].rebuilt)
        seconds = float(prof.saving_seconds[k]) + sum(pools[j].seconds for j in partners)
        found.append(SavingOption(k, "+".join(["relu", *("max_pool" for _ in partners)]), pairs, added, seconds,
                                  rebuilt))
    return found


def apply_saving_ops(gm: fx.GraphModule, units: list[int]) -> fx.GraphModule:
    """Replace the listed units of ``gm`` (in place) by their saving ops; unit positions stay the same."""
    nodes = units_of(gm)
    for k in units:
        saving_ops.replace(gm, nodes[k])
    gm.recompile()
    return gm


def graph_problem(prof: GraphProfile, overhead: float, options: list[SavingOption]) -> Problem:
    """The planner's choice from a graph profile: candidate ranges (input storages, recompute time), each also
    with the saving options inside it run in its recomputation (less to hold while recomputing, at their
    overhead), and the saving options alone (storages they shrink, their overhead)."""
    plain = candidate_ranges(prof)
    inside = [[j for j, o in enumerate(options) if all(r.start <= k < r.stop for k in o.added)] for r in plain]
    ranges = [*plain, *(r for r, ops in zip(plain, inside, strict=True) if ops)]
    inside = [*([] for _ in plain), *(ops for ops in inside if ops)]  # the saving ops each range's variant runs
    first = len(ranges)  # where the saving options' regions start
    masks = np.zeros((first + len(options), len(prof.names)), dtype=bool)
    for i, r in enumerate(ranges):
        masks[i, r.start:r.stop] = True
    label = [module or name for module, name in zip(prof.modules, prof.names, strict=True)]  # module paths first
    regions = [Region(prof.modules[r.start], "graph", r.start, r.stop, label[r.start], label[r.stop - 1])
               for r in ranges]
    regions += [Region(prof.modules[o.unit], "saving", o.unit, o.unit + 1,
                       "+".join(prof.names[k] for k in sorted(o.added)), o.kind) for o in options]
    seconds = np.array([range_seconds(prof, r) + overhead + sum(options[j].seconds for j in ops)
                        for r, ops in zip(ranges, inside, strict=True)] + [o.seconds for o in options])
    inputs = [range_storages(prof, r) for r in ranges] + [np.zeros(0, dtype=np.int64) for _ in options]
    shrinks: list[Shrink | None] = [None] * first
    entries_of: dict[tuple[int, int], list[int]] = {}
    for e, (s, k) in enumerate(zip(prof.saves.entry_storage.tolist(), prof.saves.entry_unit.tolist(), strict=True)):
        entries_of.setdefault((k, s), []).append(e)
    for o in options:
        entries = sorted({e for pair in o.pairs for e in entries_of[pair]})
        shrinks.append(Shrink(o.unit, np.array(entries, dtype=np.int64), o.added, o.rebuilt))
    inner = [[first + j for j in ops] for ops in inside] + [[] for _ in options]
    return Problem(saves=prof.saves, regions=regions, masks=masks, inputs=inputs, seconds=seconds,
                   macs=masks.astype(np.int64) @ prof.macs, forward_seconds=float(prof.seconds.sum()),
                   forward_macs=int(prof.macs.sum()), shrinks=shrinks, inner=inner, element=prof.element,
                   narrowable=prof.narrowable)
