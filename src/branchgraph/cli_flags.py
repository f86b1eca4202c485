"""Every command's flags (built only for the command being run, so that ``branchgraph --help`` imports no torch)
and the function each command runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from branchgraph.choices import COMPILE_BUDGET_S, CONCRETE_PRECISIONS, DEFAULTS, MODES, PRECISIONS
from branchgraph.cli_args import (
    input_size,
    json_object,
    nonnegative_float,
    positive_float,
    positive_int,
    positive_ints,
)
from branchgraph.commands import (
    cmd_bench,
    cmd_bench_parallel,
    cmd_branches,
    cmd_compare,
    cmd_eval,
    cmd_graph,
    cmd_memory,
    cmd_models,
    cmd_optimize,
    cmd_prune,
    cmd_report,
    cmd_summary,
    cmd_train,
)
from branchgraph.heap import HEAP_POLICIES
from branchgraph.inference.int8 import CALIBRATION_SIZE, MAX_ACCURACY_DROP_POINTS
from branchgraph.memory.checkpointing import COSTS
from branchgraph.memory.lossy import LOSSY
from branchgraph.passes.manager import DEFAULT_PASSES, PASSES
from branchgraph.training.config import DEVICES, LOGGERS, OPTIMIZERS, PRESETS, SCHEDULES
from branchgraph.training.report import SPLITS

PASSES_HELP = (f"comma-separated passes, of: {', '.join(PASSES)} (default: the mode's lossless set, "
               + "; ".join(f"{mode}: {','.join(names)}" for mode, names in DEFAULT_PASSES.items()) + ")")
ROUNDS_HELP = "interleaved timing rounds per variant (default 10)"
HEAP_HELP = ("keep: freed tensor memory stays in the process for the next step (no page faults on reuse; resident "
             "memory stays at least at the peak); system: the C library's own policy")
TRUST_HELP = ("rebuild the run's model spec (package.module:factory, file.py:factory, timm:NAME) from the checkpoint "
              "even though it runs code; only for checkpoints you trust (or give --model SPEC again)")
MODEL_HELP = ("registry model name (see 'branchgraph models'), or a spec: package.module:factory, "
              "path/to/file.py:factory, timm:NAME")
RUN_MODEL_HELP = MODEL_HELP + ", or a run directory made by 'branchgraph train' (its weights, input size and data)"
TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "model": dict(help=MODEL_HELP),
    "model_kwargs": dict(type=lambda t: json_object(t, "--model-kwargs"),
                         help='JSON object of model options, e.g. \'{"width": 0.25}\''),
    "epochs": dict(type=positive_int, help="training epochs"),
    "batch_size": dict(type=positive_int, help="global batch size (split over DDP processes)"),
    "optimizer": dict(choices=OPTIMIZERS, help="SGD (with momentum) or AdamW"),
    "lr": dict(type=positive_float, help="learning rate (the peak for --schedule onecycle)"),
    "momentum": dict(type=float, help="SGD momentum"),
    "weight_decay": dict(type=float, help="L2 weight decay (decoupled for AdamW)"),
    "schedule": dict(choices=SCHEDULES, help="learning-rate schedule, stepped per batch"),
    "label_smoothing": dict(type=float, help="label smoothing of the training loss, in [0, 1)"),
    "resize": dict(type=positive_int, help="resize images to N x N (d2l uses 96)"),
    "crop_padding": dict(type=int, help="random-crop augmentation with this zero padding"),
    "random_erasing": dict(type=float, metavar="P", help="erase a random rectangle of each training image with "
                           "probability P"),
    "ema_decay": dict(type=float, metavar="D", help="evaluate and save an exponential moving average of the "
                      "weights (decay per step, e.g. 0.999)"),
    "val_size": dict(type=int, help="training images held out for validation (fixed split)"),
    "limit": dict(type=positive_int, help="use only the first N samples of each split"),
    "precision": dict(choices=PRECISIONS,
                      help="arithmetic precision; auto (the default) times fp32 and, where the processor has native "
                      "bf16, bf16 on this machine, with both memory layouts unless --[no-]channels-last is given, "
                      "and keeps the fastest (cached per machine, model and input)"),
    "memory_budget": dict(metavar="BUDGET", help="checkpoint activations to fit this budget: a fraction of the "
                          "plain model's saved bytes (0.25) or a size (300MiB); see 'branchgraph memory'"),
    "memory_lossy": dict(choices=LOSSY, help="LOSSY: keep saved activations in bf16 (alone, or under "
                         "--memory-budget); refused where float64 gradients change by more than the tolerance"),
    "branch_stats": dict(type=positive_int, nargs="?", const=10, metavar="K",
                         help="record per-branch gradient statistics every K steps (default 10) into "
                         "branch_stats.jsonl, the epoch metrics and a heatmap branch_stats.png"),
    "device": dict(choices=DEVICES, help="auto: CUDA when available, else CPU"),
    "seed": dict(type=int, help="seed of the initial weights, batch order and augmentation"),
    "threads": dict(type=positive_int, help="intra-op CPU threads"),
    "heap": dict(choices=HEAP_POLICIES, help=HEAP_HELP + " (default keep)"),
    "data": dict(metavar="SPEC", help="fashion-mnist (default), an image folder DIR (DIR/train/<class>/*.png, "
                 "val/, test/) or pkg.mod:factory / file.py:factory returning (train, val[, test]) datasets"),
    "data_dir": dict(help="folder with the Fashion-MNIST IDX files (default $BRANCHGRAPH_DATA or Debian's)"),
    "log": dict(choices=LOGGERS, help="also log to TensorBoard: event files in the run directory (needs the "
                "tensorboard extra); metrics.csv and metrics.jsonl are always written"),
    "early_stop": dict(type=positive_int, metavar="EPOCHS", help="stop when the validation accuracy has not "
                       "improved for this many epochs (the last checkpoint is kept)"),
    "out_dir": dict(help="parent folder of run directories (default runs)"),
}
TRAIN_SWITCHES = {
    "hflip": "random horizontal flips", "channels_last": "channels_last memory layout (default: timed, see "
    "--precision)", "normalize": "normalise inputs by the training set's mean and deviation",
    "deterministic": "deterministic algorithms, no timing-based choices (bit-exact resume)",
    "nesterov": "Nesterov momentum for SGD", "tta_flip": "evaluate each image and its mirror image, logits averaged",
}


def _add_tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", help="comma-separated engines --tune may choose among (torch, compiled, "
                   "onnxruntime, openvino; default: all for inference, torch for training)")
    p.add_argument("--retune", action="store_true", help="measure again instead of using the cached choice")
    p.add_argument("--compile-budget", type=nonnegative_float, default=COMPILE_BUDGET_S,
                   metavar="SECONDS", help="leave out a compiled candidate that takes longer to compile "
                   "(0: compile none; default %(default)s)")


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="the run's model spec, given again to rebuild it (registry models "
                   "need nothing)")
    p.add_argument("--data", default=None, metavar="SPEC", help="the run's data spec, given again to load it "
                   "(Fashion-MNIST and image folders need nothing)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def _add_int8_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="SPEC", help="inference: data to calibrate and judge int8 candidates on "
                   "(fashion-mnist, an image folder, file.py:factory), preprocessed as training would; a run's own "
                   "data by default, none otherwise (int8 left out)")
    p.add_argument("--calibration-size", type=positive_int, default=CALIBRATION_SIZE, metavar="N",
                   help="training images int8 is calibrated on (default %(default)s)")
    p.add_argument("--max-accuracy-drop", type=nonnegative_float, default=MAX_ACCURACY_DROP_POINTS, metavar="POINTS",
                   help="top-1 points int8 may lose against fp32 on the held-out split (default %(default)s)")
    p.add_argument("--trust-checkpoint", action="store_true", help="a run of a model or data spec: " + TRUST_HELP)


def _add_heap_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heap", choices=HEAP_POLICIES, default="keep", help=HEAP_HELP + " (default keep)")


def _add_mode_flag(p: argparse.ArgumentParser, function: str, help_text: str) -> None:
    p.add_argument("--mode", choices=MODES, default=DEFAULTS[function]["mode"].value,
                   help=f"{help_text} (default %(default)s)")


def _add_input_flags(
    p: argparse.ArgumentParser, batch: int | None, batch_help: str = "batch size of the measured step"
) -> None:
    """--input, --model-kwargs, --seed and (unless ``batch`` is None) --batch."""
    p.add_argument("--input", metavar="C,H,W", type=input_size, help="input size without the batch (default: "
                   "the registry's; required for a model spec)")
    p.add_argument("--model-kwargs", type=lambda t: json_object(t, "--model-kwargs"), default=None,
                   metavar="JSON", help='JSON object of options for the model\'s factory, e.g. \'{"width": 0.5}\'')
    if batch is not None:
        p.add_argument("--batch", type=positive_int, default=batch, help=f"{batch_help} (default {batch})")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's weights and the random input (default 0)")


def _command(sub: dict[str, argparse.ArgumentParser], name: str, func: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
    """Subcommand ``name``'s parser (``sub``: the chosen ones; a scratch parser for the others), running ``func``."""
    p = sub.get(name) or argparse.ArgumentParser(add_help=False)
    p.set_defaults(func=func)
    return p


def _add_training(sub: dict[str, argparse.ArgumentParser]) -> None:
    """The commands that list the models and train."""
    _command(sub, "models", cmd_models)

    p = _command(sub, "train", cmd_train)
    p.add_argument("--preset", choices=tuple(PRESETS), help="starting settings (default fast)")
    p.add_argument("--config", help="JSON file of settings, applied after the preset")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help="with --resume: " + TRUST_HELP)
    for key, kw in TRAIN_FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, **kw)
    for key, text in TRAIN_SWITCHES.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, action=argparse.BooleanOptionalAction,
                       help=text)


def _add_analysis(sub: dict[str, argparse.ArgumentParser]) -> None:
    """The commands that show what a model costs."""
    p = _command(sub, "summary", cmd_summary)
    p.add_argument("model", help=MODEL_HELP)
    _add_input_flags(p, batch=DEFAULTS["summary"]["batch"])
    p.add_argument("--depth", type=positive_int, default=None, help="nesting depth of the module rows")

    p = _command(sub, "compare", cmd_compare)
    p.add_argument("model_a", metavar="A", help=MODEL_HELP)
    p.add_argument("model_b", metavar="B", help=MODEL_HELP)
    _add_input_flags(p, batch=DEFAULTS["compare"]["batch"])

    p = _command(sub, "graph", cmd_graph)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--output", required=True, help="output file: .svg, .dot/.gv or .html")
    _add_input_flags(p, batch=DEFAULTS["draw"]["batch"])

    p = _command(sub, "report", cmd_report)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--output", default="report.html", help="the .html file to write (default report.html)")
    _add_input_flags(p, batch=DEFAULTS["report"]["batch"], batch_help="batch size of the measured step "
                     "(BatchNorm trains on two or more)")
    p.add_argument("--budget", help="draw the checkpoint plan for this kept-bytes budget (as memory --budget)")
    p.add_argument("--peak", help="draw the checkpoint plan for this peak budget (as memory --peak)")
    p.add_argument("--branches", action="store_true", help="add each block's branch gradient shares (float64)")


def _add_speed(sub: dict[str, argparse.ArgumentParser]) -> None:
    """The commands that make a model faster or smaller and measure it."""
    p = _command(sub, "optimize", cmd_optimize)
    p.add_argument("model", help=RUN_MODEL_HELP)
    p.add_argument("--passes", help=PASSES_HELP)
    _add_mode_flag(p, "optimize", "optimise for training (gradients and weight updates verified) or inference")
    _add_input_flags(p, batch=DEFAULTS["optimize"]["batch"], batch_help="batch of the verification input")
    p.add_argument("--no-verify", action="store_true", help="skip the verification against the original")
    p.add_argument("--tune", action="store_true", help="choose precision (bf16 only where native), layout, the "
                   "pass set and, for inference, the engine by timing each on this machine at --tune-batch; cached "
                   "per machine and model")
    p.add_argument("--tune-batch", type=positive_int, default=DEFAULTS["optimize"]["tune_batch"],
                   help="batch size the --tune timings use (default %(default)s)")
    _add_tune_flags(p)
    p.add_argument("--out", metavar="DIR", help="with --tune --mode eval: write the chosen model for deployment "
                   "(torch.export program, ONNX or OpenVINO IR) and record.json; branchgraph.inference.load reads it")
    p.add_argument("--onnx", metavar="FILE", help="export the optimised eval model to this ONNX file")
    _add_int8_flags(p)
    p.add_argument("--show", type=int, default=3, help="changes listed per pass (default 3)")

    p = _command(sub, "prune", cmd_prune)
    p.add_argument("run", metavar="RUN_DIR", help="run directory made by 'branchgraph train'")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of prunable channels to remove (0..1)")
    p.add_argument("--epochs", type=positive_int, default=1, help="fine-tuning epochs (default 1)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak fine-tuning lr (default: run's / 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_checkpoint_flags(p)

    p = _command(sub, "bench", cmd_bench)
    p.add_argument("model", help=RUN_MODEL_HELP)
    _add_mode_flag(p, "bench", "time training steps or inference")
    _add_input_flags(p, batch=DEFAULTS["bench"]["batch"], batch_help="batch size of the timed calls")
    p.add_argument("--rounds", type=positive_int, default=10, help=ROUNDS_HELP)
    p.add_argument("--passes", help=PASSES_HELP)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--tune", action="store_true", help="add the variant chosen by timing precisions (bf16 only "
                   "where native), layouts, {eager, --passes} and, for inference, engines on this machine")
    _add_tune_flags(p)
    p.add_argument("--peers", action="store_true", help="inference: add torch.compile with freezing, ONNX Runtime "
                   "and OpenVINO (fp32, bf16 where native, int8 where calibration data is known), each with its "
                   "output error (and int8's accuracy)")
    _add_int8_flags(p)
    _add_heap_flag(p)

    p = _command(sub, "bench-parallel", cmd_bench_parallel)
    p.add_argument("model", help=MODEL_HELP)
    _add_mode_flag(p, "bench_parallel", "time training steps or inference")
    batches = DEFAULTS["bench_parallel"]["batches"]
    p.add_argument("--batches", type=positive_ints, default=batches,
                   help=f"comma-separated batch sizes (default {','.join(map(str, batches))})")
    _add_input_flags(p, batch=None)
    p.add_argument("--rounds", type=positive_int, default=10, help=ROUNDS_HELP)
    p.add_argument("--workers", type=positive_int, help="threads per block on CPU (default: one per branch)")
    _add_heap_flag(p)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available, else CPU")


def _add_checks(sub: dict[str, argparse.ArgumentParser]) -> None:
    """The commands that plan memory, share gradients among branches, evaluate a run."""
    p = _command(sub, "memory", cmd_memory)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--budget", help="bound the activations kept for backward: a fraction of the plain "
                   "model's (0.1) or a size (300MiB)")
    p.add_argument("--peak", help="bound the step's measured peak (alone or with --budget): a fraction of the "
                   "plain step's (0.35) or a size (300MiB)")
    p.add_argument("--no-saving-ops", action="store_true", help="do not let max pools keep 1-byte offsets and "
                   "lone ReLUs 1-byte masks (exact; chosen only where they beat recomputation)")
    p.add_argument("--lossy-saves", choices=LOSSY, help="LOSSY, off by default: keep saved activations in bf16 "
                   "(half of float32's bytes; checkpoint inputs stay whole); refused where the float64 gradients "
                   "change by more than the documented tolerance")
    _add_input_flags(p, batch=DEFAULTS["plan"]["batch"], batch_help="training batch size the plan is for")
    p.add_argument("--cost", choices=COSTS, default="time",
                   help="what the plan minimises: measured forward time of the recomputed layers, or their MACs")
    p.add_argument("--measure", action="store_true", help="measure a step of the plain and the planned model, "
                   "and time --rounds of both")
    p.add_argument("--rounds", type=positive_int, default=10, help=ROUNDS_HELP + " (with --measure)")
    _add_heap_flag(p)

    p = _command(sub, "branches", cmd_branches)
    p.add_argument("model", help=MODEL_HELP)
    _add_input_flags(p, batch=DEFAULTS["branches"]["batch"], batch_help="batch of the measured step")

    p = _command(sub, "eval", cmd_eval)
    p.add_argument("run", metavar="RUN_DIR", help="run directory (or checkpoint file)")
    p.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate on")
    p.add_argument("--data-dir", default=None, help=TRAIN_FLAGS["data_dir"]["help"])
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples only (default: the run's)")
    p.add_argument("--precision", choices=CONCRETE_PRECISIONS, default=None,
                   help="run inference in this precision instead of the run's own")
    _add_checkpoint_flags(p)


def add_flags(chosen: dict[str, argparse.ArgumentParser]) -> None:
    """Add each chosen command's flags to its parser, and the function it runs."""
    for add in (_add_training, _add_analysis, _add_speed, _add_checks):
        add(chosen)
