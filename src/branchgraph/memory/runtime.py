"""Run a model's traced graph with ranges of it under ``torch.utils.checkpoint``, in the model itself.

The planned forward is Python generated from the fx graph (as GraphModule does), with each checkpointed range
split out into a function of the root module and the range's inputs. The model only changes class (to a
subclass whose forward runs that code), so its module tree and state-dict keys stay as they were.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from branchgraph.memory.lossy import exact_saves, narrowed_saves
from branchgraph.memory.regions.graph import apply_saving_ops, units_of
from branchgraph.memory.retype import copy_retyped, retype, unretype
from branchgraph.memory.reversible import statistics_frozen

_STATE = threading.local()  # .recomputing: a checkpointed range is being run again for backward
_BATCH_NORMS = (F.batch_norm, torch.batch_norm)


def _recomputing() -> bool:
    return getattr(_STATE, "recomputing", False)


@contextlib.contextmanager
def _recompute(modules: list[nn.Module]) -> Iterator[None]:
    """The recomputation: BatchNorm modules' statistics frozen, functional batch_norm and in-place buffer
    updates in the range skipped, so running statistics change once per step."""
    _STATE.recomputing = True
    try:
        with statistics_frozen(modules):
            yield
    finally:
        _STATE.recomputing = False


def batch_norm_once(x: torch.Tensor, running_mean: Any, running_var: Any, *args: Any, **kwargs: Any) -> Any:
    """``F.batch_norm`` that updates copies of the running statistics while recomputing (the same operator
    saves the same tensors, and the real statistics change once)."""
    if _recomputing():
        running_mean, running_var = (None if t is None else t.clone() for t in (running_mean, running_var))
    return F.batch_norm(x, running_mean, running_var, *args, **kwargs)


def buffer_update_once(method: str, buffer: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``buffer.<method>_(...)`` (e.g. a batch counter's ``add_``), skipped while recomputing."""
    return buffer if _recomputing() else getattr(buffer, method)(*args, **kwargs)


def _compile(graph: fx.Graph, label: str) -> Callable[..., Any]:
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<branchgraph {label}>", "exec"), namespace)
    return namespace["forward"]


def _copy_into(graph: fx.Graph, node: fx.Node, env: dict[fx.Node, fx.Node]) -> fx.Node:
    """Copy ``node`` into a range's graph, reading parameters again by name and guarding statistics updates."""

    def lookup(arg: fx.Node) -> fx.Node:
        if arg not in env:  # a get_attr outside the range: read it again inside
            env[arg] = graph.get_attr(str(arg.target))
        return env[arg]

    if node.op == "call_function" and node.target in _BATCH_NORMS:
        args = fx.node.map_arg(node.args, lookup)
        return graph.call_function(batch_norm_once, args, fx.node.map_arg(node.kwargs, lookup))
    first = node.args[0] if node.args else None
    if (node.op == "call_method" and str(node.target).endswith("_") and isinstance(first, fx.Node)
            and first.op == "get_attr"):
        args = fx.node.map_arg(node.args, lookup)
        return graph.call_function(buffer_update_once, (node.target, *args), fx.node.map_arg(node.kwargs, lookup))
    return graph.node_copy(node, lookup)


def _caller(function: Callable[..., Any], modules: list[str], index: int) -> Callable[..., Any]:
    def run(root: nn.Module, *inputs: Any) -> Any:
        if not torch.is_grad_enabled():
            return function(root, *inputs)
        used = [root.get_submodule(p) for p in modules]
        with exact_saves():  # its inputs kept whole under lossy saves: the recomputation is the forward's
            return checkpoint(function, root, *inputs, use_reentrant=False, preserve_rng_state=True,
                              context_fn=lambda: (contextlib.nullcontext(), _recompute(used)))

    run.__name__ = run.__qualname__ = f"checkpointed_range_{index}"
    return run


@dataclass
class Program:
    """The compiled planned forward: ``forward(root, root, *inputs)``; ``lossy``: run with saved activations
    kept in bfloat16 (``lossy.narrowed_saves``)."""

    forward: Callable[..., Any]
    lossy: bool = False


def build_program(gm: fx.GraphModule, ranges: list[tuple[int, int]], saving: list[int],
                  lossy: bool = False) -> Program:
    """Generate the planned forward of ``gm``'s graph with units [start, stop) of each range checkpointed and
    the ``saving`` units replaced by their saving ops (``gm``'s graph is changed)."""
    apply_saving_ops(gm, saving)
    units = units_of(gm)
    starts = dict(ranges)
    main = fx.Graph()
    root = main.placeholder("_bg_root")
    env: dict[fx.Node, fx.Node] = {}
    inside: set[fx.Node] = set()
    position = {n: k for k, n in enumerate(units)}
    for node in gm.graph.nodes:
        if node in inside:
            continue
        k = position.get(node)
        if k is None or k not in starts:
            env[node] = main.node_copy(node, env.__getitem__)
            continue
        members = units[k:starts[k]]
        inside.update(members)
        own = set(members)
        inputs = [*dict.fromkeys(a for m in members for a in m.all_input_nodes
                                 if a not in own and a.op != "get_attr")]
        outputs = [n for n in members if any(u not in own for u in n.users)]
        sub = fx.Graph()
        sub_env = {n: sub.placeholder(n.name) for n in inputs}
        for member in members:
            sub_env[member] = _copy_into(sub, member, sub_env)
        sub.output(sub_env[outputs[0]] if len(outputs) == 1 else tuple(sub_env[o] for o in outputs))
        modules = sorted({str(m.target) for m in members if m.op == "call_module"})
        call = main.call_function(_caller(_compile(sub, f"range {k}"), modules, k),
                                  (root, *(env[n] for n in inputs)))
        if len(outputs) == 1:
            env[outputs[0]] = call
        else:
            for i, out in enumerate(outputs):
                env[out] = main.call_function(operator.getitem, (call, i))
    return Program(_compile(main, "planned forward"), lossy)


def _container_hooks(root: nn.Module) -> bool:
    """Whether a container module below ``root`` has hooks, other than observers (hooks marked
    ``observer = True``, such as the memory recorder's, which only watch and may miss inlined calls)."""
    for m in root.modules():
        if m is root or next(m.children(), None) is None:
            continue
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values(), *m._backward_hooks.values(),
                 *m._backward_pre_hooks.values()]
        if any(not getattr(h, "observer", False) for h in hooks):
            return True
    return False


class _Planned(nn.Module):
    """Mixed in before a model's class: a training forward that records autograd runs the planned graph program
    in ``_bg_program`` (traced in training mode); any other forward is the model's own, and so is one while a
    container module (which the traced graph inlines) has hooks, so that those hooks fire."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(*args, **kwargs)
        program = self.__dict__["_bg_program"]
        with narrowed_saves() if program.lossy else contextlib.nullcontext():
            if _container_hooks(self):
                return super().forward(*args, **kwargs)
            return program.forward(self, self, *args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        """A planned copy: the model's own class is copied (a GraphModule's copy makes a class of its own, which
        must not derive from the planned one), then planned again with the same program."""
        program = self.__dict__.pop("_bg_program")
        try:
            twin = copy_retyped(self, memo, _Planned, "Planned")
        finally:
            self.__dict__["_bg_program"] = program
        twin.__dict__["_bg_program"] = program
        return twin


def install(model: nn.Module, program: Program) -> nn.Module:
    """Make ``model`` (in place) run ``program``; its class becomes ``Planned<Cls>``, a subclass of its own."""
    retype(model, _Planned, "Planned")
    model.__dict__["_bg_program"] = program
    return model


def uninstall(model: nn.Module) -> None:
    """Undo ``install`` in place."""
    unretype(model, _Planned)
    model.__dict__.pop("_bg_program", None)
