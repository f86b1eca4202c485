"""Checkpoint regions made of modules, for models torch.fx cannot trace: every called module (Inception branches
marked) and every run of 2+ children of a plain ``nn.Sequential``, run by swapping the module's class."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.checkpoint import checkpoint

from branchgraph.graph.record import ModuleCalls, SavedTensors, StorageTable, leaf_macs, tensors
from branchgraph.graph.tracing import layer_failure
from branchgraph.memory.problem import Problem, Region, Saves
from branchgraph.memory.retype import copy_retyped, retype, unretype
from branchgraph.memory.reversible import statistics_frozen


@dataclass
class _Profile:
    """What one training forward saved, per storage, and what each module read and computed."""

    paths: list[str]
    sizes: np.ndarray  # bytes per storage
    entry_storage: np.ndarray  # (storage, saver module) pairs: storage index ...
    entry_path: np.ndarray  # ... and the saving module's index in ``paths``
    inputs: dict[str, set[int]]  # module path -> storage indices of its tensor inputs
    changed: set[str]  # module paths with an input changed in place during or after their call (not checkpointable)
    macs: dict[str, int]  # leaf module path -> forward MACs (all calls)
    seconds: dict[str, float]  # leaf module path -> forward time measured in the profiling step (all calls)


def _profile(model: nn.Module, example: torch.Tensor) -> _Profile:
    table = StorageTable([*model.parameters(), *model.buffers(), example])
    path_index = {p: i for i, (p, _) in enumerate(model.named_modules())}
    inputs: dict[str, set[int]] = {}
    macs: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def on_call(name: str, module: nn.Module, args: Any, output: Any, elapsed: float) -> None:
        inputs.setdefault(name, set()).update(s for s in map(table.id, tensors(args)) if s is not None)
        found = leaf_macs(module, args, output)
        if found is not None:
            macs[name] = macs.get(name, 0) + found[0]
            seconds[name] = seconds.get(name, 0.0) + elapsed

    versions: list[tuple[str, torch.Tensor, int]] = []  # (module path, input, its version when the call began)

    def on_enter(name: str, module: nn.Module, args: Any) -> None:
        versions.extend((name, t, t._version) for t in tensors(args))

    model.train()
    try:
        model(example)  # warm-up, so that the timed step does not pay first-call costs
    except Exception as exc:  # re-raised naming the innermost layer that was running
        raise layer_failure(model, "", tuple(example.shape), exc) from None
    calls = ModuleCalls(model, on_call, on_enter)
    saved = SavedTensors(table, lambda: path_index[calls.current])
    with calls, saved:
        try:
            model(example)
        except Exception as exc:  # re-raised naming the innermost layer that was running
            raise layer_failure(model, calls.current, tuple(example.shape), exc) from None
    entries = saved.entries()
    changed = {path for path, t, version in versions if t._version != version}  # an in-place op, then or later
    return _Profile(list(path_index), np.array(table.sizes, dtype=np.int64), entries[:, 0], entries[:, 1],
                    inputs, changed, macs, seconds)


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


def module_problem(model: nn.Module, example: torch.Tensor) -> Problem:
    """Profile a training forward of ``model`` (a copy the caller gives away) per module; the candidate regions
    are every called module and every run of 2+ children of a plain nn.Sequential, except those whose input an
    in-place op changes during or after them (the recomputation would start from the changed value)."""
    prof = _profile(model, example)
    regions: list[Region] = []
    members: list[list[str]] = []
    for path, module in model.named_modules():
        if path not in prof.inputs:
            continue
        if path not in prof.changed:
            regions.append(Region(path, "module"))
            members.append([path])
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            children = [f"{path}.{n}" if path else n for n, _ in module.named_children()]
            for start in range(len(children)):
                if children[start] in prof.changed:
                    continue
                for stop in range(start + 2, len(children) + (0 if start == 0 else 1)):
                    regions.append(Region(path, "segment", start, stop))
                    members.append(children[start:stop])
    index = {p: k for k, p in enumerate(prof.paths)}
    end = _subtree_ends(prof.paths)
    masks = np.zeros((len(regions), len(prof.paths)), dtype=bool)
    for i, group in enumerate(members):
        masks[i, index[group[0]]:end[index[group[-1]]]] = True  # pre-order: subtrees are ranges
    leaf_macs = np.array([prof.macs.get(p, 0) for p in prof.paths], dtype=np.int64)
    leaf_seconds = np.array([prof.seconds.get(p, 0.0) for p in prof.paths])
    inputs = [np.array(sorted(prof.inputs.get(group[0], set())), dtype=np.int64) for group in members]
    return Problem(saves=Saves(prof.sizes, prof.entry_storage, prof.entry_path), regions=regions, masks=masks,
                   inputs=inputs, seconds=masks.astype(np.float64) @ leaf_seconds,
                   macs=masks.astype(np.int64) @ leaf_macs, forward_seconds=float(leaf_seconds.sum()),
                   forward_macs=int(leaf_macs.sum()))


def _contexts(modules: list[nn.Module]) -> tuple[contextlib.AbstractContextManager[None], ...]:
    return contextlib.nullcontext(), statistics_frozen(modules)


def _wants_checkpoint(module: nn.Module, args: tuple[Any, ...]) -> bool:
    return torch.is_grad_enabled() and (
        any(t.requires_grad for t in tensors(args)) or any(p.requires_grad for p in module.parameters()))


class _Checkpointed(nn.Module):
    """Mixed in before a module's class: its forward runs under torch.utils.checkpoint while autograd records."""

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        return copy_retyped(self, memo, _Checkpointed, "Checkpointed")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = super().forward
        if not _wants_checkpoint(self, args):
            return forward(*args, **kwargs)
        # Containers are copied as they are now: the recomputation in backward must see the arguments of this call,
        # not a list the caller has appended to since (DenseNet's ``layer(features)``).
        args, kwargs = tree_map(lambda leaf: leaf, (args, kwargs))
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True,
                          context_fn=partial(_contexts, [self]), **kwargs)


def _run(modules: list[nn.Module], x: Any) -> Any:
    for module in modules:
        x = module(x)
    return x


class _Segmented(nn.Sequential):
    """Mixed in before an nn.Sequential's class: the runs of children in ``_checkpoint_runs`` are checkpointed."""

    _checkpoint_runs: dict[int, int]

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        return copy_retyped(self, memo, _Segmented, "Segmented")

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


def _retype(module: nn.Module, mixin: type) -> None:
    retype(module, mixin, "Checkpointed" if mixin is _Checkpointed else "Segmented")


def apply_module_regions(model: nn.Module, regions: list[Region]) -> None:
    """Set ``model`` (in place) up to checkpoint module and segment regions."""
    for region in regions:
        module = model.get_submodule(region.path)
        if region.start is None:
            _retype(module, _Checkpointed)
        else:
            _retype(module, _Segmented)
            runs = module.__dict__.setdefault("_checkpoint_runs", {})
            runs[region.start] = region.stop


def remove_module_regions(model: nn.Module) -> None:
    """Undo ``apply_module_regions`` in place (every module back to its own class)."""
    for module in model.modules():
        for mixin in (_Checkpointed, _Segmented):
            unretype(module, mixin)
        module.__dict__.pop("_checkpoint_runs", None)
