"""Capture a model as a torch.fx graph with shapes: fx's symbolic tracer, else torch.export; models neither can
capture fall back to module hooks."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from branchgraph.errors import BranchgraphError, out_of_memory


class InputShapeError(BranchgraphError):
    """The example input does not fit the model; the message names the layer that failed."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ONE_VALUE = "Expected more than 1 value per channel when training"  # BatchNorm's error over N x 1 x 1 at N = 1


def layer_failure(model: nn.Module, target: str, shape: tuple[int, ...], exc: BaseException) -> BranchgraphError:
    """An InputShapeError naming layer ``target`` (a module path) and its type; a BatchNorm given one value per
    channel in training mode (batch 1 over a 1x1 map, as in SE and selective-kernel attention) blames the batch; an
    allocation failure is OutOfMemory, never a wrong input size."""
    oom = out_of_memory(exc, f" running {type(model).__name__} on input {list(shape)}")
    if oom is not None:
        return oom
    try:
        kind = type(model.get_submodule(target)).__name__ if target else type(model).__name__
    except AttributeError:
        kind = "function"
    if _ONE_VALUE in str(exc) and shape:
        return InputShapeError(
            f"batch {shape[0]} is too small for {type(model).__name__} in training mode: layer "
            f"'{target or '<top>'}' ({kind}) gets one value per channel (a 1x1 map at batch {shape[0]}), which "
            "batch normalisation cannot normalise; use a batch of 2 or more", "batch")
    return InputShapeError(
        f"input of shape {list(shape)} does not fit {type(model).__name__}: layer '{target or '<top>'}' ({kind}) "
        f"failed: {_first_line(exc)}; give an input size the model accepts"
    )


class _ShapeProp(fx.Interpreter):
    """fx's ShapeProp (``node.meta['tensor_meta']`` on every node), but quiet, and an error names the
    layer (module path) whose node failed instead of printing a traceback."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our error already names the node's layer
        self.model, self.shape = model, shape

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:  # re-raised as a user error naming the node's layer
            target = n.target if n.op == "call_module" else node_module(n) or n.name
            raise layer_failure(self.model, str(target), self.shape, exc) from None
        meta = map_aggregate(result, lambda v: _extract_tensor_metadata(v) if isinstance(v, torch.Tensor) else v)
        if isinstance(result, torch.Tensor) or meta != result:
            n.meta["tensor_meta"] = meta
        return result


def node_module(node: fx.Node) -> str:
    """The innermost module path a node was traced in ('' at the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return ""


class _Tracer(fx.Tracer):
    """fx's tracer (torch.nn's own layers are leaves), with buffers read as graph nodes, so that an in-place update
    of one (a counter's ``add_``) is in the graph instead of run once while tracing; with ``whole_autograd``, modules
    whose class sets ``own_autograd = True`` (reversible stages: their autograd recomputes) stay whole too."""

    proxy_buffer_attributes = True

    def __init__(self, whole_autograd: bool) -> None:
        super().__init__()
        self.whole_autograd = whole_autograd

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (self.whole_autograd and getattr(m, "own_autograd", False)) or super().is_leaf_module(
            m, module_qualified_name)


def symbolic_trace(model: nn.Module, *, whole_autograd: bool = False) -> fx.GraphModule:
    """``model`` traced by torch.fx, sharing its modules: the one tracing policy of every analysis and pass
    (``whole_autograd``: for memory planning, modules with their own autograd are single nodes)."""
    return fx.GraphModule(model, _Tracer(whole_autograd).trace(model), type(model).__name__)


def _in_place(node: fx.Node) -> bool:
    """A method call that changes its object in place (``buffer.add_(1)``): used or not, it is the update."""
    return node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).startswith("_")


def eliminate_dead_code(graph: fx.Graph) -> None:
    """fx's dead-code elimination, but in-place method calls, whose results nobody reads, are kept."""
    for node in reversed(graph.nodes):
        if not node.users and not node.is_impure() and not _in_place(node):
            graph.erase_node(node)


@dataclass
class Capture:
    """A traced graph with ``tensor_meta`` on every node, or ``None`` with a note saying why not. ``method`` says
    which tracer took it: "symbolic_trace" (module calls kept as nodes) or "export" (torch.export's aten graph, for
    models with Python control flow on shapes; specialised to the input's shape and the model's train/eval mode)."""

    model: nn.Module
    graph_module: fx.GraphModule | None
    note: str | None = None
    method: str = "symbolic_trace"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log records and nothing on stderr while an export is tried: torch prints the partial graph of a failed
    capture, which would bury the one line that says what happened."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(before)


def _export(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """torch.export's non-strict capture of a copy of ``model`` (Python control flow on shapes is specialised to
    ``example``'s, and train/eval to the model's mode), as a GraphModule whose parameters keep the model's names."""
    from torch.export import export

    with _quiet():
        exported = export(copy.deepcopy(model), (example,), strict=False).module()
    # torch warns about its own pytree specs each time such a graph is copied: not the user's concern (set here, at
    # the call, so that it holds where the caller's warning filters were reset since import, as under pytest)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    return fx.GraphModule(exported, exported.graph, type(model).__name__)  # a plain one: train() and eval() work


def capture(model: nn.Module, example: torch.Tensor) -> Capture:
    """Symbolically trace ``model`` and propagate shapes of ``example`` through it (in eval mode, no grad); where
    the symbolic tracer fails (Python control flow on a tensor's shape), capture it with torch.export instead, in
    the model's current train/eval mode.

    A model neither can capture (control flow on tensor values, say) gives a Capture without a graph and a note
    saying what to change; an input the model cannot take raises InputShapeError naming the failing layer.
    """
    method = "symbolic_trace"
    try:
        gm = symbolic_trace(model)
    except Exception as traced:  # any tracing failure means: try torch.export, then fall back to module hooks
        try:
            gm, method = _export(model, example), "export"
        except Exception as exported:  # neither tracer: figures come from module hooks
            return Capture(model, None, (
                f"neither torch.fx ({_first_line(traced)}) nor torch.export ({_first_line(exported)}) could capture "
                f"{type(model).__name__}; figures come from module hooks, so there is no fork/join or branch "
                "structure and no graph picture. Control flow on tensor values needs torch.where or torch.cond"
            ))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _ShapeProp(gm, model, tuple(example.shape)).run(example)
    finally:
        model.train(was_training)
    return Capture(model, gm, method=method)
