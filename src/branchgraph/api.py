"""The top-level Python API for a model: analyse, draw, optimise, plan memory, time. Every entry point takes a
module, a registry name or a model spec (``package.module:factory``, ``file.py:factory``, ``timm:NAME``) with
``input_size`` (C, H, W; required where the registry does not know it) and ``model_kwargs`` (options of the
model's factory). Training runs: ``branchgraph.api_runs``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from branchgraph.choices import COMPILE_BUDGET_S, DEFAULTS
from branchgraph.errors import ConfigError
from branchgraph.example import example_for
from branchgraph.inference.int8 import CALIBRATION_SIZE, MAX_ACCURACY_DROP_POINTS
from branchgraph.models.registry import resolve_model

if TYPE_CHECKING:  # the packages behind each entry point are imported when it is called (a light `import`)
    from branchgraph.analysis.forks import ForkGradients
    from branchgraph.benchmark import BenchResult, ParallelBenchResult
    from branchgraph.graph.draw import Drawing
    from branchgraph.graph.tables import Comparison, Summary
    from branchgraph.inference.int8 import Calibration
    from branchgraph.memory.checkpointing import CheckpointPlan
    from branchgraph.passes.pipeline import OptimizeReport
    from branchgraph.tune import TunedReport

Model = nn.Module | str


def _classes(module: nn.Module, size: tuple[int, ...], mode: str) -> int | None:
    """The number of logits a module of the user's gives per image (for training targets), from one forward of a
    copy in eval mode; None for inference, or where the output is not one row of logits per image."""
    if mode != "train":
        return None
    import copy

    with torch.no_grad():
        out = copy.deepcopy(module).eval()(torch.zeros(1, *size))
    logits = out[0] if isinstance(out, tuple) else out
    return int(logits.shape[1]) if isinstance(logits, torch.Tensor) and logits.dim() == 2 else None


def summary(model: Model, input_size: tuple[int, ...] | None = None, batch: int = DEFAULTS["summary"]["batch"],
            seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> Summary:
    """Per module and per branch: output shape, parameters, forward and backward MACs, the bytes autograd saved
    for backward in a measured training step, and the step's peak.

    Args:
        model: a module, a registry name or a model spec.
        input_size: one input's shape (C, H, W), without the batch.
        batch: the batch the shapes, MACs and saved bytes are for.
        seed: seed of the model's weights (registry, spec) and of the random input.
        model_kwargs: options of the model's factory.

    Returns:
        The summary: ``print`` shows its table, ``to_dict()`` its data.
    """
    from branchgraph.graph.tables import summary as summarise

    name, module, size, _ = resolve_model(model, input_size, model_kwargs, seed)
    return summarise(module, size, batch, seed, name)


def compare(model_a: Model, model_b: Model, input_size: tuple[int, ...] | None = None,
            batch: int = DEFAULTS["compare"]["batch"], seed: int = 0, model_kwargs: dict[str, Any] | None = None
            ) -> Comparison:
    """Two models' summaries side by side at the same input: params, MACs, saved bytes, and B / A.

    Args:
        model_a: the first model (module, registry name or spec); ``model_b`` the second.
        input_size, batch, seed, model_kwargs: as for ``summary``, the same for both.

    Returns:
        Both summaries (``a``, ``b``); ``print`` shows the table with the ratios.
    """
    from branchgraph.graph.tables import Comparison

    return Comparison(*(summary(m, input_size, batch, seed, model_kwargs) for m in (model_a, model_b)))


def draw(model: Model, input_size: tuple[int, ...] | None = None, output: str | Path = "graph.svg",
         batch: int = DEFAULTS["draw"]["batch"], seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> Drawing:
    """Draw ``model``'s captured graph: forks, joins and each block's branches side by side, coloured by MACs.

    Args:
        output: .svg, .html (inline SVG) or .dot/.gv (Graphviz source); written whole or not at all.
        model, input_size, batch, seed, model_kwargs: as for ``summary``.

    Returns:
        Where it was written, with the number of blocks and branches drawn.
    """
    from branchgraph.graph.draw import Drawing
    from branchgraph.graph.draw import draw as draw_summary

    s = summary(model, input_size, batch, seed, model_kwargs)
    return Drawing(s.model, draw_summary(s, output), len(s.blocks), len(s.branches))


def optimize(model: Model, input_size: tuple[int, ...] | None = None, *, passes: list[str] | None = None,
             mode: str = DEFAULTS["optimize"]["mode"], batch: int = DEFAULTS["optimize"]["batch"], seed: int = 0,
             model_kwargs: dict[str, Any] | None = None, verify: bool = True, tune: bool = False,
             tune_batch: int = DEFAULTS["optimize"]["tune_batch"], out: str | Path | None = None,
             onnx: str | Path | None = None, engines: list[str] | None = None, rounds: int = 3, retune: bool = False,
             cache: bool = True, compile_budget: float | None = COMPILE_BUDGET_S,
             calibration: Calibration | str | None = None, calibration_size: int = CALIBRATION_SIZE,
             max_accuracy_drop: float = MAX_ACCURACY_DROP_POINTS, trust_checkpoint: bool = False,
             ) -> tuple[nn.Module, OptimizeReport | TunedReport]:
    """Run graph passes on ``model`` and verify them against it; ``tune``: the fastest verified variant here.

    Args:
        model: a module, registry name, model spec, or a trained run's directory (its weights, input size and data).
        passes: pass names (``branchgraph.passes``); default the mode's lossless set.
        mode: ``"eval"`` (inference) or ``"train"``: which graph is optimised and how it is verified (outputs;
            in training also gradients and the weights after an SGD step).
        batch: the random batch the verification runs on.
        verify: check the result against ``model`` (a failed check raises, nothing is returned).
        tune: time precisions, layouts, {eager, the passes} and, for inference, compiled and runtime engines at
            ``tune_batch``, interleaved, and return the fastest verified one as a module (fp32 in, fp32 out).
        out: with ``tune`` in eval mode, write the chosen model for deployment (``branchgraph.inference.load``).
        onnx: in eval mode, export the returned module to this ONNX file (``report.onnx``).
        engines, rounds, retune, cache, compile_budget: the tuner's (``branchgraph.tune.tune``): the engines to try,
            timed rounds, measure again instead of reading this machine's cached choice, cache the choice, and the
            seconds ``torch.compile`` may take before it is left out.
        calibration: data for int8 candidates: a ``Calibration``, or a data spec preprocessed as training would; a
            run's own data by default.
        calibration_size, max_accuracy_drop: training images int8 is calibrated on, and the top-1 points it may
            lose against fp32 on the held-out split.
        trust_checkpoint: import the model and data specs a run's checkpoint names; input_size, seed,
            model_kwargs: as for ``summary``.

    Returns:
        The optimised module and its report (passes applied, verification errors, with ``tune`` the timings).
    """
    from branchgraph.passes.pipeline import optimize as run_passes_verified

    _check_outputs(mode, tune, out, onnx)
    from branchgraph.training.served_run import calibration_for, resolve_any

    _, module, size, classes, run = resolve_any(model, input_size, model_kwargs, seed, trust_checkpoint)
    example, _ = example_for(size, batch, seed)
    if not tune:
        net, report = run_passes_verified(module, example, passes=passes, mode=mode, verify=verify, seed=seed)
        return net, _exported(net, example, onnx, report)
    drop = max_accuracy_drop / 100
    data = calibration_for(calibration, run, size, calibration_size, drop) if mode == "eval" else None
    timed, target = example_for(size, tune_batch, seed, classes or _classes(module, size, mode))
    options = {"engines": engines, "rounds": rounds, "retune": retune, "cache": cache, "compile_budget": compile_budget}
    net, report = _tuned(module, example, timed, target, mode, passes, verify, seed, data, options)
    if out is not None:
        from branchgraph.deploy import save

        report.deployed = save(module, example, report.tuning, out, served=net, calibration=data)
    return net, _exported(net, example, onnx, report)


def _check_outputs(mode: str, tune: bool, out: str | Path | None, onnx: str | Path | None) -> None:
    """One ConfigError line where ``out`` or ``onnx`` cannot be written in this mode, before minutes of tuning."""
    if onnx is not None and mode != "eval":
        raise ConfigError("onnx exports inference graphs: use it in eval mode", param="onnx")
    if out is not None and not (tune and mode == "eval"):
        raise ConfigError("out writes the tuned inference model: use it with tuning in eval mode", param="out")
    if out is not None:
        from branchgraph.deploy import check_target

        check_target(out)


def _tuned(module: nn.Module, example: torch.Tensor, timed: torch.Tensor, target: torch.Tensor | None, mode: str,
           passes: list[str] | None, verify: bool, seed: int, calibration: Calibration | None,
           options: dict[str, Any]) -> tuple[nn.Module, TunedReport]:
    """The tuner's choice for ``module`` as a module, with its report (passes verified where it has passes)."""
    from branchgraph.passes.manager import resolve
    from branchgraph.passes.pipeline import optimize as run_passes_verified
    from branchgraph.tune import TunedReport, serving_module
    from branchgraph.tune import tune as tune_choice

    tuning = tune_choice(module, timed, target, mode, pass_sets=((), resolve(passes, mode)), calibration=calibration,
                         **options)
    cand = tuning.chosen
    if cand.engine == "torch" and cand.passes is not None:
        net, passes_report = run_passes_verified(module, example, passes=cand.pass_list(), mode=mode, verify=verify,
                                                 seed=seed)
        return net, TunedReport(**vars(passes_report), tuning=tuning)
    return serving_module(module, example, mode, cand, calibration), TunedReport(mode, [], tuning=tuning)


def _exported(net: nn.Module, example: torch.Tensor, onnx: str | Path | None, report: OptimizeReport | TunedReport
              ) -> OptimizeReport | TunedReport:
    """``report``, with ``net`` exported to the ONNX file ``onnx`` where one is asked for."""
    if onnx is not None:
        from branchgraph.passes.export import export_onnx

        report.onnx = export_onnx(net, example, onnx)
    return report


def plan(model: Model, input_size: tuple[int, ...] | None = None, budget: float | int | str | None = None, *,
         peak: float | int | str | None = None, batch: int = DEFAULTS["plan"]["batch"], seed: int = 0,
         model_kwargs: dict[str, Any] | None = None, cost: str = "time", saving_ops: bool = True,
         measure: bool = True, lossy_saves: str | None = None, region_limit: float | int | str | None = None,
         compare_rounds: int | None = None) -> tuple[nn.Module, CheckpointPlan]:
    """Plan activation checkpointing of ``model`` trained at ``batch`` so that what it keeps for backward, and/or
    its step's peak, fits a budget while recomputing least.

    Args:
        budget: bound on the activations kept for backward: a fraction of the plain model's (0.25) or a size
            ("300MiB").
        peak: bound on the training step's measured peak, likewise.
        cost: what the plan minimises: ``"time"`` (measured forward time of what is recomputed) or ``"macs"``.
        saving_ops, measure, lossy_saves, region_limit: as in ``branchgraph.memory.plan``.
        compare_rounds: afterwards, measure a training step of the plain and the planned model and time that
            many interleaved rounds (``plan.compared``).
        model, input_size, batch, seed, model_kwargs: as for ``summary``.

    Returns:
        The checkpointed module (same weights, same results) and the plan (saved bytes, recomputed cost, peaks).
    """
    from branchgraph.memory.checkpointing import plan as plan_checkpointing
    from branchgraph.memory.measure import compare_variants

    _, module, size, classes = resolve_model(model, input_size, model_kwargs, seed)
    example, _ = example_for(size, batch, seed)
    planned, result = plan_checkpointing(module, example, budget, peak=peak, cost=cost, saving_ops=saving_ops,
                                         measure=measure, lossy_saves=lossy_saves, region_limit=region_limit)
    if compare_rounds is not None:
        step, target = example_for(size, batch, seed, classes or _classes(module, size, "train"))
        result.compared = compare_variants({"plain": module, "planned": planned}, step, target,
                                           rounds=compare_rounds)
    return planned, result


def branches(model: Model, input_size: tuple[int, ...] | None = None, *, batch: int = DEFAULTS["branches"]["batch"],
             seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> list[ForkGradients]:
    """How each fork's gradient splits among its branches, in one float64 training step of a copy of ``model``
    (the contributions are checked to add up to the fork's gradient).

    Args:
        model, input_size, batch, seed, model_kwargs: as for ``summary``.

    Returns:
        One entry per fork: its gradient norm and each branch's contribution and share.
    """
    import copy

    from branchgraph.analysis.forks import fork_gradients

    _, module, size, _ = resolve_model(model, input_size, model_kwargs, seed)
    example, _ = example_for(size, batch, seed, dtype=torch.float64)
    return fork_gradients(copy.deepcopy(module).double(), example, seed=seed)


def bench(model: Model, mode: str = DEFAULTS["bench"]["mode"], batch: int = DEFAULTS["bench"]["batch"],
          input_size: tuple[int, ...] | None = None, *, rounds: int = 10, warmup: int = 2, compile: bool = True,
          passes: list[str] | None = None, tune: bool = False, seed: int = 0,
          model_kwargs: dict[str, Any] | None = None, peers: bool = False, retune: bool = False,
          engines: list[str] | None = None, compile_budget: float | None = COMPILE_BUDGET_S,
          calibration: Calibration | str | None = None, calibration_size: int = CALIBRATION_SIZE,
          max_accuracy_drop: float = MAX_ACCURACY_DROP_POINTS, trust_checkpoint: bool = False) -> BenchResult:
    """Time eager, compiled, optimised and optimised+compiled variants of ``model`` interleaved in this process.

    Args:
        mode: time training steps (``"train"``) or inference (``"eval"``).
        rounds, warmup: interleaved timed rounds per variant, and untimed calls before them.
        compile: include the ``torch.compile`` variants.
        passes: the optimised variant's passes (default the mode's lossless set).
        tune: add the variant ``optimize(tune=True)`` picks (among ``engines``; ``retune``, ``compile_budget`` as
            there).
        peers: in inference, add Inductor with freezing, ONNX Runtime and OpenVINO, each with its output error,
            and OpenVINO int8 where calibration data is known, with its held-out top-1 beside eager fp32's.
        calibration, calibration_size, max_accuracy_drop, trust_checkpoint: as for ``optimize``.
        model, input_size, batch, seed, model_kwargs: as for ``summary``; ``model`` may be a run directory.

    Returns:
        Median seconds per call of each variant, its speed-up over eager and achieved GFLOP/s.
    """
    from branchgraph.benchmark import bench as bench_model

    return bench_model(model, mode, batch, input_size, rounds=rounds, warmup=warmup, compile=compile, passes=passes,
                       tune=tune, seed=seed, model_kwargs=model_kwargs, peers=peers, retune=retune,
                       engines=engines, compile_budget=compile_budget, calibration=calibration,
                       calibration_size=calibration_size, max_accuracy_drop=max_accuracy_drop,
                       trust_checkpoint=trust_checkpoint)


def bench_parallel(model: Model, mode: str = DEFAULTS["bench_parallel"]["mode"],
                   batches: tuple[int, ...] = DEFAULTS["bench_parallel"]["batches"],
                   input_size: tuple[int, ...] | None = None, *, rounds: int = 10, workers: int | None = None,
                   device: str = "cpu", model_kwargs: dict[str, Any] | None = None, seed: int = 0
                   ) -> ParallelBenchResult:
    """The model's branches run one after another against concurrently (the ``parallel`` pass), interleaved.

    Args:
        batches: the batch sizes timed.
        rounds: interleaved timing rounds per variant and batch.
        workers: threads per block on CPU (default one per branch).
        device: ``"cpu"`` or ``"cuda"`` (branches on their own CUDA streams).
        model, mode, input_size, seed, model_kwargs: as for ``bench``.

    Returns:
        Per batch size: median seconds of both and the ratio.
    """
    from branchgraph.benchmark import bench_parallel as bench_branches

    return bench_branches(model, mode, batches, input_size, rounds=rounds, workers=workers, device=device,
                          model_kwargs=model_kwargs, seed=seed)


def report(model: Model, input_size: tuple[int, ...] | None = None, output: str | Path = "report.html",
           batch: int = DEFAULTS["report"]["batch"], *, budget: float | int | str | None = None,
           peak: float | int | str | None = None, branches: bool = False, seed: int = 0,
           model_kwargs: dict[str, Any] | None = None) -> Path:
    """Write one self-contained interactive HTML page for ``model``: summary and graph with collapsible blocks.

    Args:
        output: the page's path (written whole or not at all).
        budget, peak: draw a checkpoint plan under these bounds on the graph (as for ``plan``).
        branches: add each block's gradient shares (as ``branches`` measures them).
        model, input_size, batch, seed, model_kwargs: as for ``summary``.

    Returns:
        The page's path.
    """
    from branchgraph.interactive import write_report

    return write_report(model, input_size, output, batch=batch, budget=budget, peak=peak, branches=branches,
                        seed=seed, model_kwargs=model_kwargs)
