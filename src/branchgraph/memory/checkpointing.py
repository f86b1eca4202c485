"""Activation checkpointing planned under a memory budget (kept bytes, or the step's peak), in eager mode.

``plan`` traces the model with torch.fx and profiles one training forward node by node: which storages autograd
saves, and who saved them. Exact *saving ops* go in first where they pay (max pools keep 1-byte argmax offsets
instead of 8-byte indices; a ReLU whose output nothing else keeps saves a 1-byte mask). Then regions of the graph
(ranges between cut points, short ranges such as a branch or a BatchNorm+ReLU before a convolution) are chosen
for the least measured recomputation (greedy by bytes freed per second, and an integer program where it does
better), and run under ``torch.utils.checkpoint`` inside the model.
Models fx cannot trace are planned on module regions instead (with a note).

During a recomputation BatchNorm statistics are frozen, so running statistics are updated once per step. State-dict
keys do not change: the model (or, for module regions, a submodule) only changes class.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from branchgraph.errors import ConfigError
from branchgraph.memory import lossy
from branchgraph.memory import runtime as graph_runtime
from branchgraph.memory.budget import MIB, parse_budget
from branchgraph.memory.checkpoint_plan import CheckpointPlan
from branchgraph.memory.measure import step_memory
from branchgraph.memory.problem import Problem, Region, Saves
from branchgraph.memory.regions import graph as graph_regions
from branchgraph.memory.regions import modules as module_regions
from branchgraph.memory.search import Planner
from branchgraph.memory.verify import grad_error, step_failure, verify_plan
from branchgraph.timing import time_interleaved

COSTS = ("time", "macs")


@functools.cache
def checkpoint_overhead(repeats: int = 30) -> float:
    """Seconds ``torch.utils.checkpoint`` adds per region and step on this machine (its Python machinery, RNG
    state, recomputation hooks), measured once on a trivial region: median of interleaved timings."""
    x = torch.ones(8, requires_grad=True)

    def plain() -> None:
        torch.relu(x).sum().backward()

    def checkpointed() -> None:
        checkpoint(torch.relu, x, use_reentrant=False, preserve_rng_state=True).sum().backward()

    medians = time_interleaved({"plain": plain, "checkpointed": checkpointed}, repeats, warmup=0)
    return max(0.0, medians["checkpointed"] - medians["plain"])


def _bytes(budget: float | int, scale: int) -> int:
    """A parsed budget in bytes: a fraction of ``scale``, or bytes."""
    return int(budget * scale) if isinstance(budget, float) else int(budget)


def _grad_bytes(model: nn.Module) -> int:
    """The parameters' gradient buffers."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def traced_problem(net: nn.Module, example: torch.Tensor, saving: bool) -> tuple[Problem, fx.Graph] | None:
    """Candidate graph regions and saving options of ``net`` (traced by fx), and the graph they index (plans are
    applied to copies of it, never to a new trace); None where fx cannot trace it."""
    gm = graph_regions.trace(net.train())
    if gm is None:
        return None
    graph = copy.deepcopy(gm.graph)  # before profiling: the plans' graph as traced
    prof = graph_regions.profile_graph(gm, net, example, saving=saving)
    options = graph_regions.saving_options(gm, prof) if saving else []
    return graph_regions.graph_problem(prof, checkpoint_overhead(), options), graph


LOSSY_CHECK = 8  # samples of the example batch the float64 gradient check of lossy saves runs on
MEASURED = 8  # plans measured at most for a peak budget, cheapest first
WINDOW = 1.5  # a plan is measured if its predicted peak is within this factor of the budget (predictions of
# googlenet-d2l's plans ran up to 60 % above the measured peaks, and up to 12 % below on smaller nets)


def _measured_peak(model: nn.Module, example: torch.Tensor, result: CheckpointPlan | None,
                   graph: fx.Graph | None = None) -> int | None:
    """The heap peak of one training step of ``model`` with the plan (None: plain; made on ``graph``), or None
    where the heap cannot be read."""
    net = model if result is None else apply_plan(copy.deepcopy(model), result, graph)  # step_memory runs a copy
    names = None if result is None else [r.name for r in result.regions]
    with torch.random.fork_rng(devices=[]), step_failure(model, names):
        return step_memory(net, example).peak_bytes


def plan(
    model: nn.Module, example: torch.Tensor, budget: float | int | str | None = None, *, peak: float | int | str |
    None = None, cost: str = "time", saving_ops: bool = True, inplace: bool = False, measure: bool = True,
    lossy_saves: str | None = None, region_limit: float | int | str | None = None,
) -> tuple[nn.Module, CheckpointPlan]:
    """Plan checkpointing of ``model`` (trained on batches shaped like ``example``) with the least recomputation
    (measured forward time, ``cost="time"``, or MACs, ``cost="macs"``) so that the activations saved for backward
    fit ``budget``, and/or the step's measured peak fits ``peak`` (each a fraction of the plain model's, or bytes).

    Under ``peak`` the cheapest plans whose predicted peak is near it are run for one step each and the first whose
    measured heap peak fits is taken (``measure=False``, or no readable heap: the prediction decides); the plan
    reports predicted and measured peaks. ``saving_ops`` (exact, on by default) lets max pools and lone ReLUs keep
    smaller tensors for backward. ``lossy_saves="bf16"`` (off by default; not exact) keeps the saved activations in
    bfloat16 and plans with their narrowed bytes; the plan reports the gradients' change in float64 (on up to
    LOSSY_CHECK samples of ``example``) and a change above ``lossy.TOLERANCE`` raises ConfigError. Returns the
    model set up to train with the plan (a copy unless ``inplace``) and the plan. A peak no plan reaches raises
    ConfigError naming the smallest one found. ``region_limit`` (with ``budget`` alone) bounds what any one region
    rematerialises in backward (a fraction of plain's saved bytes, or bytes) instead of the cheapest choice up to
    REGION_SHARE; a budget no plan within it meets raises ConfigError."""
    budgets = _parsed_options(cost, lossy_saves, budget, peak, region_limit)  # before minutes of profiling
    setting = _Setting.of(model, example, saving_ops, cost, lossy_saves, measure)
    setting.set_budgets(*budgets)
    if setting.peak_bytes is None or setting.peak_bytes >= setting.plain_reference:
        result = setting.within_kept_budget()
        result.measured_peak_bytes = _measured_peak(model, example, result, setting.graph) if measure else None
    else:
        result = _fit_peak(model, example, setting)
    checked = apply_plan(copy.deepcopy(model), result, setting.graph)  # verified, returned unless ``inplace``
    _verify(model, checked, example, result)
    return (apply_plan(model, result, setting.graph) if inplace else checked), result


Budget = float | int  # a fraction of the plain model's figure (<= 1) or bytes


def _parsed_options(cost: str, lossy_saves: str | None, budget: float | int | str | None,
                    peak: float | int | str | None, region_limit: float | int | str | None
                    ) -> tuple[Budget | None, Budget | None, Budget | None]:
    """The kept, peak and region budgets parsed; ConfigError for a cost, lossy format, budget or combination
    ``plan`` does not take."""
    if cost not in COSTS:
        raise ConfigError(f"checkpoint plan cost must be one of {', '.join(COSTS)}; got {cost!r}")
    if lossy_saves is not None and lossy_saves not in lossy.LOSSY:
        raise ConfigError(f"lossy saves must be one of {', '.join(lossy.LOSSY)}; got {lossy_saves!r}")
    if budget is None and peak is None:
        raise ConfigError("a checkpoint plan needs a budget (bytes kept for backward), a peak, or both", "budget")
    kept = None if budget is None else parse_budget(budget)
    peak_budget = None if peak is None else parse_budget(peak, "peak budget")
    region = None if region_limit is None else parse_budget(region_limit, "region limit")
    if region is not None and (budget is None or peak is not None):
        raise ConfigError("a region limit applies to a kept-bytes budget alone (a peak budget sets its own)")
    return kept, peak_budget, region


@dataclass
class _Setting:
    """One model's planning problem on one input: what the plain step keeps and peaks at, the planner over its
    regions, and the budgets in bytes; ``build`` turns a choice of regions into a CheckpointPlan."""

    model: nn.Module
    example: torch.Tensor
    problem: Problem
    planner: Planner
    note: str | None
    lossy: str | None
    plain_measured: int | None
    graph: fx.Graph | None  # the traced graph the regions index (None: module regions)
    kept_bytes: int | None = None
    limit: int | None = None
    peak_bytes: int | None = None

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor, saving_ops: bool, cost: str, lossy_saves: str | None,
           measure: bool) -> _Setting:
        """Profile ``model`` (a copy; graph regions where fx traces it, module regions otherwise)."""
        net, note, graph = copy.deepcopy(model), None, None
        with torch.random.fork_rng(devices=[]):  # the profiling steps' dropout must not move the caller's RNG
            traced = traced_problem(net, example, saving_ops)
            if traced is not None:
                problem, graph = traced
            else:
                note = (f"torch.fx could not trace {type(model).__name__}: regions are whole modules and "
                        "nn.Sequential runs, without saving ops")
                problem = module_regions.module_problem(net, example)
                problem.seconds = problem.seconds + checkpoint_overhead()
        saves = problem.saves
        if lossy_saves is not None:
            if problem.element is None or problem.narrowable is None:
                raise ConfigError(f"lossy saves need a model torch.fx can trace; {type(model).__name__} cannot be "
                                  "traced: plan it without them")
            saves = Saves(lossy.narrowed_bytes(saves.sizes, problem.element, problem.narrowable),
                          saves.entry_storage, saves.entry_unit)
        planner = Planner(saves, problem.masks, problem.inputs,
                          problem.seconds if cost == "time" else problem.macs.astype(np.float64), problem.shrinks,
                          problem.inner, recomputed_sizes=problem.saves.sizes,
                          forward_seconds=problem.forward_seconds)
        return cls(model, example, problem, planner, note, lossy_saves,
                   _measured_peak(model, example, None) if measure else None, graph)

    @property
    def plain(self) -> int:
        return self.problem.saves.total()

    @property
    def grad(self) -> int:
        return _grad_bytes(self.model)

    @property
    def in_flight(self) -> int:
        sizes = self.problem.saves.sizes
        return int(sizes.max()) if len(sizes) else 0

    @property
    def plain_peak(self) -> int:
        return self.plain + self.in_flight  # Planner.peak([]) of the plain saves

    @property
    def plain_reference(self) -> int:
        """The plain step's peak: measured where it could be, else predicted."""
        return self.plain_measured or self.plain_peak

    def set_budgets(self, kept: Budget | None, peak: Budget | None, region: Budget | None) -> None:
        """The budgets in bytes: fractions are of plain's kept bytes, and of plain's peak."""
        self.kept_bytes = None if kept is None else _bytes(kept, self.plain)
        self.limit = None if region is None else _bytes(region, self.plain)
        self.peak_bytes = None if peak is None else _bytes(peak, self.plain_reference)

    def within_kept_budget(self) -> CheckpointPlan:
        """The cheapest plan within the kept-bytes budget (and region limit); no regions without a budget."""
        least, kept, limit = self.planner.plain, self.kept_bytes, self.limit  # plain's bytes, or narrowed ones
        result = self.build(*(([], least) if kept is None or kept >= least else self.planner.choose(kept, limit)))
        if limit is not None and kept is not None and (
                result.largest_recompute_bytes > limit or result.saved_bytes > kept):
            raise ConfigError(f"no plan keeps at most {kept / MIB:.1f} MiB with regions rematerialising at "
                              f"most {limit / MIB:.1f} MiB each: allow larger regions or keep more")
        return result

    def build(self, chosen: list[int], saved: int) -> CheckpointPlan:
        """The plan of regions ``chosen`` (keeping ``saved`` bytes), with its predicted peak and costs."""
        problem, planner = self.problem, self.planner
        chosen = sorted(chosen, key=lambda i: (problem.regions[i].start or 0, i))
        ranges = [i for i in chosen if problem.regions[i].kind != "saving"]
        saving = [problem.regions[i] for i in chosen if problem.regions[i].kind == "saving"]
        ops = [op for op in (planner.shrinks[j] for i in chosen for j in [i, *planner.inner[i]]) if op is not None]
        return CheckpointPlan(
            input_shape=list(self.example.shape), budget_bytes=self.kept_bytes, plain_saved_bytes=self.plain,
            saved_bytes=saved, forward_macs=problem.forward_macs, extra_macs=int(problem.macs[chosen].sum()),
            forward_seconds=problem.forward_seconds, extra_seconds=float(problem.seconds[chosen].sum()),
            region_overhead_seconds=checkpoint_overhead(),
            largest_recompute_bytes=int(planner.transient[chosen].max()) if chosen else 0,
            predicted_peak_bytes=planner.peak(chosen, self.grad, self.in_flight), plain_peak_bytes=self.plain_peak,
            regions=[problem.regions[i] for i in ranges], method="modules" if self.note else "graph",
            saving_ops=sorted({k for op in ops for k in op.added}),
            saving_op_names=[f"{r.first} ({r.last})" for r in sorted(saving, key=lambda r: r.start or 0)],
            grad_bytes=self.grad, peak_budget_bytes=self.peak_bytes, note=self.note,
            plain_measured_peak_bytes=self.plain_measured, lossy=self.lossy)


def _verify(model: nn.Module, checked: nn.Module, example: torch.Tensor, result: CheckpointPlan) -> None:
    """An exact plan must leave float64 gradients as they were; lossy saves must change them within tolerance."""
    if result.lossy is None:
        exact = result.regions or result.saving_ops
        result.grad_change = verify_plan(model, checked, example, [r.name for r in result.regions]) if exact else 0.0
        return
    with step_failure(model, [r.name for r in result.regions]):
        result.lossy_grad_error = grad_error(model, checked, example[:LOSSY_CHECK])
    if not result.lossy_grad_error <= lossy.TOLERANCE:
        raise ConfigError(f"lossy {result.lossy} saves change {type(model).__name__}'s parameter gradients by "
                          f"{result.lossy_grad_error:.2e} relative (float64), above the tolerance "
                          f"{lossy.TOLERANCE:g}: plan without lossy saves")


def _fit_peak(model: nn.Module, example: torch.Tensor, setting: _Setting) -> CheckpointPlan:
    """The cheapest of the planner's peak options found to fit the peak budget, measuring at most MEASURED: first
    the cheapest predicted to fit (once one measures over, predictions are scaled by the worst ratio seen: on small
    nets they run below the measurement), then cheaper ones predicted within WINDOW of it (for large nets they
    mostly run above), taking the first whose measured peak fits. Without a measurement (no plain measurement, or
    no readable heap) the cheapest predicted to fit. Else ConfigError naming the smallest peak found, and its
    share of plain's peak."""
    planner, peak, kept = setting.planner, setting.peak_bytes, setting.kept_bytes
    assert peak is not None
    grad, in_flight, measure = setting.grad, setting.in_flight, setting.plain_measured is not None
    options = [(cost, chosen, saved, predicted)
               for cost, chosen, saved in planner.peak_options(peak, grad, in_flight, kept)
               if (predicted := planner.peak(chosen, grad, in_flight)) <= WINDOW * peak]
    measured: list[int] = []
    best: tuple[float, CheckpointPlan] | None = None

    def fits(chosen: list[int], saved: int) -> CheckpointPlan | None:
        result = setting.build(chosen, saved)
        result.measured_peak_bytes = _measured_peak(model, example, result, setting.graph) if measure else None
        if result.measured_peak_bytes is None:
            return result
        measured.append(result.measured_peak_bytes)
        return result if result.measured_peak_bytes <= peak else None

    scale = 1.0  # after a plan predicted to fit measures over, predictions are scaled by the worst such ratio
    for cost, chosen, saved, predicted in options:
        if len(measured) >= MEASURED:
            break
        if predicted * scale > peak:
            continue
        if (result := fits(chosen, saved)) is not None:
            best = (cost, result)
            break
        scale = max(scale, measured[-1] / predicted)
    verified = measure and (best is None or best[1].measured_peak_bytes is not None)
    for cost, chosen, saved, predicted in options if verified else []:
        if len(measured) >= MEASURED or (best is not None and cost >= best[0]):
            break
        if predicted > peak and (result := fits(chosen, saved)) is not None:
            best = (cost, result)
            break
    if best is not None:
        return best[1]
    also = "" if kept is None else f" with at most {kept / MIB:.1f} MiB kept"
    if measured:
        smallest, what = min(measured), f"smallest measured peak of {len(measured)} plans tried"
    else:
        smallest, what = planner.smallest_peak(grad, in_flight), "smallest predicted peak"
    least = f"the {what} is {smallest / MIB:.1f} MiB ({smallest / setting.plain_reference:.1%} of plain)"
    raise ConfigError(f"peak budget {peak / MIB:.1f} MiB{also} cannot be met at input {list(example.shape)}: "
                      f"{least}; ask for at least that, or a smaller batch")


def apply_plan(model: nn.Module, plan: CheckpointPlan, graph: fx.Graph | None = None) -> nn.Module:
    """Set ``model`` (in place) up to train with the plan; returns it. ``graph``: the traced graph the plan was made
    on (``plan`` passes it); without it the model is traced again (a model rebuilt from a checkpoint, say)."""
    if plan.method == "modules":
        module_regions.apply_module_regions(model, plan.regions)
        return model
    if not plan.regions and not plan.saving_ops and plan.lossy is None:
        return model
    if graph is not None:
        gm = fx.GraphModule(model, copy.deepcopy(graph), type(model).__name__)
    else:
        was_training = model.training
        gm = graph_regions.trace(model.train())
        model.train(was_training)
    if gm is None:
        raise ConfigError(f"torch.fx cannot trace {type(model).__name__} again to apply a graph plan")
    spans = [(int(r.start), int(r.stop)) for r in plan.regions if r.start is not None and r.stop is not None]
    program = graph_runtime.build_program(gm, spans, plan.saving_ops, lossy=plan.lossy is not None)
    return graph_runtime.install(model, program)


def remove_plan(model: nn.Module) -> nn.Module:
    """Undo ``apply_plan`` in place (the model and its modules back to their own classes), e.g. before pickling."""
    graph_runtime.uninstall(model)
    module_regions.remove_module_regions(model)
    return model


__all__ = ["COSTS", "CheckpointPlan", "Region", "apply_plan", "checkpoint_overhead", "parse_budget", "plan",
           "remove_plan"]
