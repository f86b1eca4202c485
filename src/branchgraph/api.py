"""The top-level Python API: every entry point takes a module, a registry name or a model spec
(``package.module:factory``, ``file.py:factory``, ``timm:NAME``) with ``input_size`` (C, H, W; required where the
registry does not know it) and ``model_kwargs`` (options of the model's factory)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from branchgraph.choices import DEFAULTS
from branchgraph.errors import ConfigError
from branchgraph.example import example_for
from branchgraph.models.registry import resolve_model

if TYPE_CHECKING:  # the packages behind each entry point are imported when it is called (a light `import`)
    from branchgraph.analysis.forks import ForkGradients
    from branchgraph.benchmark import BenchResult, ParallelBenchResult
    from branchgraph.graph.draw import Drawing
    from branchgraph.graph.tables import Comparison, Summary
    from branchgraph.memory.checkpointing import CheckpointPlan
    from branchgraph.passes.pipeline import OptimizeReport
    from branchgraph.training.config import TrainConfig
    from branchgraph.training.trainer import TrainResult
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
            seed: int = 0,
            model_kwargs: dict[str, Any] | None = None) -> Summary:
    """Per module and per branch: output shape, parameters, forward and backward MACs, the bytes autograd saved
    for backward in a measured training step, and the step's peak."""
    from branchgraph.graph.tables import summary as summarise

    name, module, size, _ = resolve_model(model, input_size, model_kwargs, seed)
    return summarise(module, size, batch, seed, name)


def compare(model_a: Model, model_b: Model, input_size: tuple[int, ...] | None = None,
            batch: int = DEFAULTS["compare"]["batch"], seed: int = 0, model_kwargs: dict[str, Any] | None = None
            ) -> Comparison:
    """Two models' summaries (``summary``) side by side at the same input: params, MACs, saved bytes, and B / A."""
    from branchgraph.graph.tables import Comparison

    return Comparison(*(summary(m, input_size, batch, seed, model_kwargs) for m in (model_a, model_b)))


def draw(model: Model, input_size: tuple[int, ...] | None = None, output: str | Path = "graph.svg",
         batch: int = DEFAULTS["draw"]["batch"], seed: int = 0, model_kwargs: dict[str, Any] | None = None) -> Drawing:
    """Draw ``model``'s captured graph (forks, joins and each block's branches side by side, coloured by MACs) to
    ``output``: .svg, .html (inline SVG) or .dot/.gv (Graphviz source)."""
    from branchgraph.graph.draw import Drawing
    from branchgraph.graph.draw import draw as draw_summary

    s = summary(model, input_size, batch, seed, model_kwargs)
    return Drawing(s.model, draw_summary(s, output), len(s.blocks), len(s.branches))


def optimize(model: Model, input_size: tuple[int, ...] | None = None, *, passes: list[str] | None = None,
             mode: str = DEFAULTS["optimize"]["mode"], batch: int = DEFAULTS["optimize"]["batch"], seed: int = 0,
             model_kwargs: dict[str, Any] | None = None, verify: bool = True, tune: bool = False,
             tune_batch: int = DEFAULTS["optimize"]["tune_batch"], out: str | Path | None = None,
             onnx: str | Path | None = None, **tune_options: Any) -> tuple[nn.Module, OptimizeReport | TunedReport]:
    """Run graph passes (default: the mode's lossless set) on ``model`` and verify the result against it on a
    random batch of ``batch`` (outputs, and in training mode gradients and weights after an SGD step). With
    ``tune``, time precisions, layouts, {eager, the passes} and, for inference, compiled and runtime engines at
    ``tune_batch`` (``tune_options`` go to ``branchgraph.tune.tune``: engines, retune, compile_budget...) and
    return the fastest verified one as a module (fp32 in, fp32 out) whichever engine won; ``out`` (inference)
    writes it for deployment (``branchgraph.inference.load`` reads it back). ``onnx`` (inference) exports the
    returned module to that ONNX file (``report.onnx``)."""
    from branchgraph.passes.manager import resolve
    from branchgraph.passes.pipeline import optimize as run_passes_verified
    from branchgraph.tune import TunedReport, serving_module
    from branchgraph.tune import tune as tune_choice

    if onnx is not None and mode != "eval":
        raise ConfigError("onnx exports inference graphs: use it in eval mode", param="onnx")
    if out is not None and not (tune and mode == "eval"):
        raise ConfigError("out writes the tuned inference model: use it with tuning in eval mode", param="out")
    if out is not None:
        from branchgraph.deploy import check_target

        check_target(out)  # before minutes of tuning, not after
    _, module, size, classes = resolve_model(model, input_size, model_kwargs, seed)
    example, _ = example_for(size, batch, seed)
    if not tune:
        net, report = run_passes_verified(module, example, passes=passes, mode=mode, verify=verify, seed=seed)
        return net, _exported(net, example, onnx, report)
    timed, target = example_for(size, tune_batch, seed, classes or _classes(module, size, mode))
    tuning = tune_choice(module, timed, target, mode, pass_sets=((), resolve(passes, mode)), **tune_options)
    cand = tuning.chosen
    if cand.engine == "torch" and cand.passes is not None:
        net, passes_report = run_passes_verified(module, example, passes=cand.pass_list(), mode=mode, verify=verify,
                                                 seed=seed)
        report = TunedReport(**vars(passes_report), tuning=tuning)
    else:
        net, report = serving_module(module, example, mode, cand), TunedReport(mode, [], tuning=tuning)
    if out is not None:
        from branchgraph.deploy import save

        report.deployed = save(module, example, tuning, out, served=net)  # the module returned is the one deployed
    return net, _exported(net, example, onnx, report)


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
    """Plan activation checkpointing of ``model`` trained at ``batch`` so that what it keeps for backward fits
    ``budget`` and/or its step's peak fits ``peak`` (fractions of the plain model's, or sizes such as "300MiB"),
    recomputing least (measured ``cost="time"``, or ``"macs"``); ``saving_ops``, ``measure``, ``lossy_saves`` and
    ``region_limit`` as in ``branchgraph.memory.plan``. With ``compare_rounds`` (0 or more), a training step of the
    plain and of the planned model is measured afterwards, and that many rounds timed (``plan.compared``)."""
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
             seed: int = 0,
             model_kwargs: dict[str, Any] | None = None) -> list[ForkGradients]:
    """Per fork of ``model``: its gradient in a float64 training step, each branch's contribution and share
    (the contributions are checked to add up to the fork's gradient). ``model`` itself is not changed."""
    import copy

    from branchgraph.analysis.forks import fork_gradients

    _, module, size, _ = resolve_model(model, input_size, model_kwargs, seed)
    example, _ = example_for(size, batch, seed, dtype=torch.float64)
    return fork_gradients(copy.deepcopy(module).double(), example, seed=seed)


def bench(model: Model, mode: str = DEFAULTS["bench"]["mode"], batch: int = DEFAULTS["bench"]["batch"],
          input_size: tuple[int, ...] | None = None, **options: Any) -> BenchResult:
    """Time eager, compiled, optimised and (``tune=True``) tuned variants of ``model`` interleaved in this
    process: medians, ratios and achieved GFLOP/s (``branchgraph.benchmark.bench``)."""
    from branchgraph.benchmark import bench as bench_model

    return bench_model(model, mode, batch, input_size, **options)


def bench_parallel(model: Model, mode: str = DEFAULTS["bench_parallel"]["mode"],
                   batches: tuple[int, ...] = DEFAULTS["bench_parallel"]["batches"],
                   input_size: tuple[int, ...] | None = None, *, rounds: int = 10, workers: int | None = None,
                   device: str = "cpu", model_kwargs: dict[str, Any] | None = None, seed: int = 0
                   ) -> ParallelBenchResult:
    """The model's branches run one after another against concurrently (the ``parallel`` pass, ``workers``
    threads per block on CPU), ``rounds`` interleaved rounds at each batch size."""
    from branchgraph.benchmark import bench_parallel as bench_branches

    return bench_branches(model, mode, batches, input_size, rounds=rounds, workers=workers, device=device,
                          model_kwargs=model_kwargs, seed=seed)


def evaluate(run_dir: str | Path, split: str = "test", *, data_dir: str | None = None, limit: int | None = None,
             precision: str | None = None, model: str | None = None, trust_checkpoint: bool = False,
             data: Any = None) -> dict[str, Any]:
    """Accuracy and loss of a trained run on ``split``, with the run's own limit and precision unless given; a run
    of a model or data spec needs it again (``model``, ``data``) or ``trust_checkpoint``; a run on datasets given
    in Python needs them again as ``data``."""
    from branchgraph.training.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(run_dir, split=split, data_dir=data_dir, limit=limit, precision=precision,
                               model=model, trust_checkpoint=trust_checkpoint, data=data)


def prune(run_dir: str | Path, amount: float = 0.5, epochs: int = 1, *, lr: float | None = None,
          progress: bool = True, model: str | None = None, trust_checkpoint: bool = False, data: Any = None
          ) -> dict[str, Any]:
    """Prune ``amount`` of a trained run's prunable channels and fine-tune for ``epochs`` (peak ``lr``, default a
    quarter of the run's) beside the run, with held-out accuracy, parameters and MACs at each stage (``model``,
    ``trust_checkpoint`` and ``data`` as for ``evaluate``)."""
    from branchgraph.training.prune_run import prune_and_finetune

    return prune_and_finetune(run_dir, amount, epochs, lr=lr, progress=progress, model=model,
                              trust_checkpoint=trust_checkpoint, data=data)


def train(model: Model | TrainConfig | None = None, preset: str = "fast", *, config: str | Path | None = None,
          data: Any = None, run_dir: str | Path | None = None, progress: bool = True, **settings: Any
          ) -> TrainResult:
    """Train the preset's model (``googlenet-fmnist``), a registry model or model spec, with the preset's settings,
    then those of the JSON file ``config``, then ``settings`` (``epochs=2``, ``limit=512``...); a module of your
    own (its run cannot be resumed from the registry); or a complete ``TrainConfig``. ``data``: Fashion-MNIST by
    default; an image folder (``DIR/train/<class>/*.png``, ``val/``, ``test/``) or a ``pkg.mod:factory`` /
    ``file.py:factory`` returning ``(train, val[, test])``; or those datasets or DataLoaders themselves, read into
    memory. A registry model gets the data's channels and class count; other models must take them."""
    from branchgraph.training.config import TrainConfig, build_config
    from branchgraph.training.trainer import Trainer

    if isinstance(data, str):
        settings, data = {**settings, "data": data}, None
    if isinstance(model, TrainConfig):
        settings_of, module = model, None
    elif model is None or isinstance(model, str):
        named = {} if model is None else {"model": model}
        settings_of, module = build_config(preset, config, {**settings, **named}), None
    else:
        settings_of, module = build_config(preset, config, settings), model
    directory = None if run_dir is None else Path(run_dir)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return Trainer(settings_of, directory, progress=progress, model=module, data=data).run()


def resume(run_dir: str | Path, **options: Any) -> TrainResult:
    """Continue a run from its checkpoint with its saved settings (``branchgraph.training.resume``: epochs to
    extend it, heap, data_dir, progress; a run of a model or data spec needs ``model``/``data``, that spec again,
    or ``trust_checkpoint``; a run on datasets given in Python needs them again as ``data``)."""
    from branchgraph.training.runs import resume as resume_run

    return resume_run(run_dir, **options)


def report(model: Model, input_size: tuple[int, ...] | None = None, output: str | Path = "report.html",
           batch: int = DEFAULTS["report"]["batch"], *, budget: float | int | str | None = None,
           peak: float | int | str | None = None, branches: bool = False, seed: int = 0,
           model_kwargs: dict[str, Any] | None = None) -> Path:
    """Write one self-contained interactive HTML page for ``model`` measured at ``batch``: summary, graph with
    collapsible blocks, with ``budget``/``peak`` a checkpoint plan drawn on the graph, with ``branches`` each
    block's gradient shares."""
    from branchgraph.interactive import write_report

    return write_report(model, input_size, output, batch=batch, budget=budget, peak=peak, branches=branches,
                        seed=seed, model_kwargs=model_kwargs)
