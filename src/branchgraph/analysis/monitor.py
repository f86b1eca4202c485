"""``BranchMonitor``: how each fork's gradient is shared among its branches, in the user's own training loop.

The forks and branches come from the captured graph (``find_blocks``, as ``branchgraph branches`` finds them), or,
where fx cannot trace the model, from one probing forward: a tensor that several modules (none inside another)
take is a fork. Hooks stay on the model: each branch that starts with a module reads its own identity view of the
fork, so autograd hands its contribution ``g_i`` to a hook; the fork tensor's own hook sees the total ``g``.
Branches that start with a function (an identity skip, a split) are one remainder, ``g`` minus the rest. Per
branch: ``share`` = <g_i, g> / |g|^2 (the shares of a fork add up to 1) and ``grad_norm`` = |g_i|, averaged over
the steps ``update()`` was called after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.utils.hooks import RemovableHandle

from branchgraph.analysis.forks import imbalance
from branchgraph.errors import BranchgraphError, ConfigError
from branchgraph.graph.structure import find_blocks
from branchgraph.graph.tracing import capture

REMAINDER = "(other uses)"  # the branches that start with a function, as one


@dataclass
class _Fork:
    """One fork: its branch names, the module each hooked branch starts with, and whether a remainder exists."""

    name: str
    branches: list[str]
    entries: list[str]  # module path of each hooked branch (the first len(entries) of ``branches``)
    remainder: bool
    modules: list[list[str]]  # per branch: the modules on it (their parameters' gradient norm in ``collect``)
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # per branch: share, norm; then |g|
    updates: int = 0


class BranchMonitor:
    """Per fork of ``model`` (captured on a zero batch of ``input_size``), each branch's share of the fork's
    gradient and its norm, from hooks on the model; call ``update()`` after each ``loss.backward()``."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...]) -> None:
        first = next(model.parameters(), None)
        example = torch.zeros(2, *input_size) if first is None else torch.zeros(2, *input_size, dtype=first.dtype,
                                                                                  device=first.device)
        cap = capture(model, example)
        graph = cap.graph_module if cap.method == "symbolic_trace" else None
        self.forks = _graph_forks(graph) if graph is not None else _probed_forks(model, example)
        if not self.forks:
            raise ConfigError(f"model {type(model).__name__} has no fork whose branches start with a module: "
                              "nothing to monitor")
        modules = self._modules = dict(model.named_modules())
        self.armed = True  # False: the hooks let forwards through untouched (``recording`` arms them for a while)
        self._handles: list[RemovableHandle] = [
            modules[path].register_forward_pre_hook(partial(self._tap, f, i))
            for f, fork in enumerate(self.forks) for i, path in enumerate(fork.entries)]
        self._parts: dict[int, dict[int, torch.Tensor]] = {}
        self._fork_in: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # fork -> (its tensor, the one watched)
        self._watching: dict[int, RemovableHandle] = {}
        self._step: dict[int, torch.Tensor] = {}
        self.last: list[dict[str, Any]] = []

    def _tap(self, f: int, i: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not (self.armed and isinstance(x, torch.Tensor) and x.is_floating_point() and module.training
                and torch.is_grad_enabled()):
            return None
        seen = self._fork_in.get(f)
        if seen is None or seen[0] is not x:  # the first branch of this forward: watch the fork's total gradient
            # a fork on an input that needs no gradient (the batch itself) gets one, to be split among its branches
            source = x if x.requires_grad else x.detach().requires_grad_(True)
            self._unwatch(f)  # a forward whose backward never came
            self._fork_in[f], self._parts[f] = (x, source), {}
            self._watching[f] = source.register_hook(partial(self._total, f))  # removed when it fires
            seen = self._fork_in[f]
        view = seen[1].view_as(seen[1])
        view.register_hook(partial(self._part, f, i))
        return (view, *args[1:])

    def _part(self, f: int, i: int, grad: torch.Tensor) -> None:
        self._parts.setdefault(f, {})[i] = grad.detach().float()

    def _total(self, f: int, grad: torch.Tensor) -> None:
        """All hooked contributions have arrived: reduce them (and the remainder) to shares and norms."""
        fork, g = self.forks[f], grad.detach().float()
        parts = [self._parts.get(f, {}).get(i, torch.zeros_like(g)) for i in range(len(fork.entries))]
        if fork.remainder:
            parts.append(g - sum(parts, torch.zeros_like(g)))
        energy = g.square().sum()
        dots = torch.stack([(p * g).sum() for p in parts]) / torch.where(energy > 0, energy, torch.ones_like(energy))
        norms = torch.stack([torch.linalg.vector_norm(p) for p in parts])
        self._step[f] = torch.cat([dots, norms, energy.sqrt()[None]])
        self._parts.pop(f, None)
        self._fork_in.pop(f, None)
        self._unwatch(f)

    def _unwatch(self, f: int) -> None:
        handle = self._watching.pop(f, None)
        if handle is not None:
            handle.remove()

    def update(self) -> None:
        """Add the last backward's shares and norms to the means (call after ``loss.backward()``)."""
        if not self._step:
            raise ConfigError("no branch gradients arrived since the last update: call update() after "
                              "loss.backward() of a training-mode forward of the monitored model")
        self.last = []
        for f, values in self._step.items():
            fork = self.forks[f]
            fork.sums = values.cpu() if fork.updates == 0 else fork.sums + values.cpu()
            fork.updates += 1
            self.last += _rows(fork, values.cpu(), 1)
        self._step.clear()

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Arm the hooks for the forward and backward inside (a monitor with ``armed = False`` costs nothing
        otherwise)."""
        before, self.armed = self.armed, True
        try:
            yield
        finally:
            self.armed = before

    def collect(self, loss_scale: float = 1.0) -> dict[str, Any]:
        """``update()``, and the step's figures per fork as ``BranchStats.collect`` gives them (``imbalance``;
        per branch ``share``, ``input_grad`` and ``param_grad``, divided by the loss scale)."""
        self.update()
        blocks: dict[str, Any] = {}
        for fork in self.forks:
            rows = [r for r in self.last if r["fork"] == fork.name]
            if not rows:
                continue
            norms = [r["grad_norm"] / loss_scale for r in rows]
            blocks[fork.name] = {"imbalance": imbalance(norms), "branches": {
                r["branch"]: {"param_grad": self._param_grad(paths) / loss_scale, "input_grad": norm,
                              "share": r["share"]} for r, norm, paths in zip(rows, norms, fork.modules, strict=True)}}
        return blocks

    def _param_grad(self, paths: list[str]) -> float:
        """The norm of the gradients of the parameters of the modules at ``paths``."""
        params = {id(p): p for path in paths for p in self._modules[path].parameters() if p.grad is not None}
        if not params:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params.values()])))

    def table(self) -> list[dict[str, Any]]:
        """One row per fork and branch: ``fork``, ``branch``, mean ``share`` and ``grad_norm``, ``fork_grad_norm``,
        ``updates``."""
        return [row for fork in self.forks if fork.updates for row in _rows(fork, fork.sums, fork.updates)]

    def to_text(self) -> str:
        rows = self.table()
        if not rows:
            return f"{len(self.forks)} forks monitored; no update yet"
        width = max(len(r["branch"]) for r in rows)
        lines = [f"{'branch':<{width}}  {'share':>7}  {'|g_i|':>10}   (mean of {rows[0]['updates']} updates)"]
        for fork in {r["fork"]: r for r in rows}.values():
            lines.append(f"fork {fork['fork']}: |g| {fork['fork_grad_norm']:.3e}")
            lines += [f"  {r['branch']:<{width}}{r['share']:7.1%}  {r['grad_norm']:10.3e}"
                      for r in rows if r["fork"] == fork["fork"]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def write(self, writer: Any, step: int) -> None:
        """The last update's shares and norms as TensorBoard scalars (a ``SummaryWriter``, or anything with its
        ``add_scalar``): ``branch_share/FORK/BRANCH`` and ``branch_grad_norm/FORK/BRANCH``."""
        for row in self.last:
            writer.add_scalar(f"branch_share/{row['fork']}/{row['branch']}", row["share"], step)
            writer.add_scalar(f"branch_grad_norm/{row['fork']}/{row['branch']}", row["grad_norm"], step)

    def close(self) -> None:
        """Remove the hooks: the model runs as if never monitored."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _rows(fork: _Fork, values: torch.Tensor, count: int) -> list[dict[str, Any]]:
    n = len(fork.branches)
    mean = (values / count).tolist()
    return [{"fork": fork.name, "branch": name, "share": mean[k], "grad_norm": mean[n + k],
             "fork_grad_norm": mean[2 * n], "updates": count} for k, name in enumerate(fork.branches)]


def _graph_forks(gm: fx.GraphModule) -> list[_Fork]:
    """The captured graph's blocks whose fork is one tensor and at least one branch starts with a module taking
    it; the other branches are the remainder."""
    nodes = {n.name: n for n in gm.graph.nodes}
    forks = []
    for block in find_blocks(gm):
        fork = nodes[block.fork]
        if not isinstance(fork.meta.get("tensor_meta"), TensorMetadata):
            continue
        hooked, rest = [], []
        for branch in block.branches:
            first = next((nodes[n] for n in branch.nodes if fork in nodes[n].all_input_nodes), None)
            takes_fork = first is not None and first.op == "call_module" and first.args[:1] == (fork,)
            (hooked if takes_fork else rest).append((branch.name, str(first.target) if takes_fork else "",
                                                     branch.modules))
        if hooked:
            names = [name for name, _, _ in hooked] + ([" + ".join(n for n, _, _ in rest)] if rest else [])
            modules = [m for _, _, m in hooked] + ([[p for _, _, m in rest for p in m]] if rest else [])
            forks.append(_Fork(block.name, names, [path for _, path, _ in hooked], bool(rest), modules))
    return forks


def _probed_forks(model: nn.Module, example: torch.Tensor) -> list[_Fork]:
    """Forks found by one forward: tensors taken by two or more modules, none inside another (each tensor's
    possible other uses are the remainder)."""
    takers: dict[int, list[str]] = {}
    seen: list[torch.Tensor] = []  # kept alive, so that no other tensor of the forward reuses an id
    handles = [m.register_forward_pre_hook(partial(_record, takers, seen, path))
               for path, m in model.named_modules() if path]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:
        raise BranchgraphError(f"model {type(model).__name__} does not run on {list(example.shape)}: {exc}",
                               "input_size") from None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    forks = []
    for paths in takers.values():
        outer = [p for p in dict.fromkeys(paths) if not any(p.startswith(q + ".") for q in paths if q != p)]
        if len(outer) >= 2:
            forks.append(_Fork(f"input of {', '.join(outer)}", [*outer, REMAINDER], outer, True,
                               [[p] for p in outer] + [[]]))
    return forks


def _record(takers: dict[int, list[str]], seen: list[torch.Tensor], path: str, module: nn.Module,
            args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], torch.Tensor):
        seen.append(args[0])
        takers.setdefault(id(args[0]), []).append(path)
