"""``branchgraph`` command line: a thin layer over the Python API; every command has ``--json``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from branchgraph.errors import BranchgraphError, ConfigError, Interrupted

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_ints(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(","))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{flag} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{flag} must be a JSON object such as '{{\"width\": 0.5}}'")
    return value


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered models with their input size and parameter count."""
    from branchgraph.models import create_model, list_models, model_info

    rows = []
    for name in list_models():
        info = model_info(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        rows.append({"name": name, "input_size": list(info.input_size or ()), "num_classes": info.num_classes,
                     "params": params, "description": info.description})
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{width}}  {'input':>11}  {'classes':>7}  {'params':>12}  description"]
    lines += [
        f"{r['name']:<{width}}  {'x'.join(map(str, r['input_size'])):>11}  {r['num_classes'] or '-':>7}  "
        f"{r['params']:>12,}  {r['description']}" for r in rows
    ]
    _emit(args, rows, "\n".join(lines))
    return 0


FLAGS = {"input_size": "--input"}  # library parameters whose flag is not their name with dashes
MODEL_HELP = ("registry model name (see 'branchgraph models'), or a spec: package.module:factory, "
              "path/to/file.py:factory, timm:NAME")
TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "model": dict(help=MODEL_HELP),
    "model_kwargs": dict(type=lambda t: _json_object(t, "--model-kwargs"),
                         help='JSON object of model options, e.g. \'{"width": 0.25}\''),
    "epochs": dict(type=_positive_int),
    "batch_size": dict(type=_positive_int, help="global batch size (split over DDP processes)"),
    "optimizer": dict(choices=("sgd", "adamw")),
    "lr": dict(type=_positive_float, help="learning rate (the peak for --schedule onecycle)"),
    "momentum": dict(type=float),
    "weight_decay": dict(type=float),
    "schedule": dict(choices=("constant", "onecycle", "cosine")),
    "label_smoothing": dict(type=float),
    "resize": dict(type=_positive_int, help="resize images to N x N (d2l uses 96)"),
    "crop_padding": dict(type=int, help="random-crop augmentation with this zero padding"),
    "random_erasing": dict(type=float, metavar="P", help="erase a random rectangle of each training image with "
                           "probability P"),
    "ema_decay": dict(type=float, metavar="D", help="evaluate and save an exponential moving average of the "
                      "weights (decay per step, e.g. 0.999)"),
    "val_size": dict(type=int, help="training images held out for validation (fixed split)"),
    "limit": dict(type=_positive_int, help="use only the first N samples of each split"),
    "precision": dict(choices=("auto", "fp32", "bf16", "fp16"),
                      help="arithmetic precision; auto (the default) times fp32 and, where the processor has native "
                      "bf16, bf16 on this machine, with both memory layouts unless --[no-]channels-last is given, "
                      "and keeps the fastest (cached per machine, model and input)"),
    "memory_budget": dict(metavar="BUDGET", help="checkpoint activations to fit this budget: a fraction of the "
                          "plain model's saved bytes (0.25) or a size (300MiB); see 'branchgraph memory'"),
    "branch_stats": dict(type=_positive_int, nargs="?", const=10, metavar="K",
                         help="record per-branch gradient statistics every K steps (default 10) into "
                         "branch_stats.jsonl, the epoch metrics and a heatmap branch_stats.png"),
    "device": dict(choices=("auto", "cpu", "cuda")),
    "seed": dict(type=int),
    "threads": dict(type=_positive_int, help="intra-op CPU threads"),
    "data_dir": dict(help="folder with the Fashion-MNIST IDX files (default $BRANCHGRAPH_DATA or Debian's)"),
    "out_dir": dict(help="parent folder of run directories (default runs)"),
}
TRAIN_SWITCHES = ("hflip", "channels_last", "normalize", "deterministic", "nesterov", "tta_flip")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in (*TRAIN_FLAGS, *TRAIN_SWITCHES) if getattr(args, key) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model (preset, then config file, then flags), or continue a run with --resume."""
    from branchgraph.train import build_config, resume, train

    overrides = _train_overrides(args)
    if args.resume:
        extra = sorted(set(overrides) - {"epochs", "data_dir"})
        if extra or args.config or args.preset:
            named = ", ".join(f"--{k.replace('_', '-')}" for k in extra) or "--preset/--config"
            raise ConfigError(f"--resume continues the run's saved settings; drop {named} (only --epochs may change)")
        result = resume(args.resume, progress=not args.quiet, epochs=overrides.get("epochs"))
    else:
        config = build_config(args.preset or "fast", args.config, overrides)
        result = train(config, progress=not args.quiet)
    final = result.final
    text = (f"run {result.run_dir}: {len(result.metrics)} epochs, "
            f"test accuracy {final.get('test_acc', float('nan')):.4f}, {final.get('elapsed_s', 0):.0f} s of training"
            f" in {result.config.precision}, {'channels_last' if result.config.channels_last else 'NCHW'}"
            + (f" (auto: {result.tuning['reason']})" if result.tuning else ""))
    _emit(args, result.to_dict(), text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's checkpoint on a split."""
    from branchgraph.train import evaluate_checkpoint

    result = evaluate_checkpoint(args.run, split=args.split, data_dir=args.data_dir, limit=args.limit,
                                 precision=args.precision)
    text = (f"{result['model']} after {result['epochs_trained']} epochs: {result['split']} accuracy "
            f"{result['accuracy']:.4f}, loss {result['loss']:.4f} ({result['samples']} samples, "
            f"{result['precision']})")
    _emit(args, result, text)
    return 0


def _summary(args: argparse.Namespace, model: str) -> Any:
    from branchgraph.graph import parse_input_size, summary

    size = parse_input_size(args.input) if args.input else None
    return summary(model, size, batch=args.batch, model_kwargs=args.model_kwargs)


def cmd_summary(args: argparse.Namespace) -> int:
    """Per-module and per-branch params, MACs and measured saved bytes of a registry model."""
    s = _summary(args, args.model)
    _emit(args, s.to_dict(args.depth), s.to_text(args.depth))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two models side by side, with B / A ratios."""
    from branchgraph.graph.render import compare_rows, render_compare

    a, b = _summary(args, args.model_a), _summary(args, args.model_b)
    data = {"a": a.model, "b": b.model, "rows": compare_rows(a, b)}
    _emit(args, data, render_compare(a, b))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    """Draw the computation graph with forks, joins and branches."""
    from branchgraph.graph.draw import draw

    s = _summary(args, args.model)
    path = draw(s, args.output)
    _emit(args, {"model": s.model, "output": str(path), "blocks": len(s.blocks), "branches": len(s.branches)},
          f"wrote {path}: {len(s.blocks)} fork/join blocks, {len(s.branches)} branches")
    return 0


def _model(args: argparse.Namespace) -> tuple[Any, tuple[int, ...], int | None]:
    """(module, input size, classes or None) of the command's model, --input and --model-kwargs."""
    from branchgraph.graph import parse_input_size
    from branchgraph.models.registry import resolve_model

    size = parse_input_size(args.input) if args.input else None
    _, model, found, classes = resolve_model(args.model, size, args.model_kwargs)
    return model, found, classes


def _passes(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run passes on a registry model, verify the result, optionally export it to ONNX."""
    import torch

    from branchgraph.passes import optimize
    from branchgraph.passes.export import export_onnx

    torch.manual_seed(args.seed)
    model, size, classes = _model(args)
    example = torch.randn(args.batch, *size)
    passes, tuning = _passes(args.passes), None
    if args.tune:
        from branchgraph.passes.manager import resolve
        from branchgraph.tune import tune

        generator = torch.Generator().manual_seed(args.seed)
        tuning = tune(model, torch.randn(args.tune_batch, *size, generator=generator),
                      torch.randint(0, classes or 1, (args.tune_batch,),
                                    generator=generator),
                      args.mode, pass_sets=((), resolve(passes, args.mode)))
        passes = tuning.chosen.pass_list()
    optimised, report = optimize(model, example, passes=passes, mode=args.mode, verify=not args.no_verify,
                                 seed=args.seed)
    data = report.to_dict()
    data["tuning"] = tuning.to_dict() if tuning else None
    if args.onnx:
        if args.mode != "eval":
            raise ConfigError("--onnx exports inference graphs: use it with --mode eval")
        data["onnx"] = str(export_onnx(optimised, example, args.onnx))
    lines = [f"{args.model} ({args.mode} mode), input {[args.batch, *size]}"]
    if tuning:
        lines.append(tuning.to_text())
    for p in data["passes"]:
        lines.append(f"  {p['name']:<14} nodes {p['nodes_before']} -> {p['nodes_after']}; "
                     f"{len(p['changed'])} changes, {len(p['skipped'])} skipped")
        lines += [f"      {c}" for c in p["changed"][:args.show]]
    if data["verification"]:
        v = data["verification"]
        for family, c in v["float64_equivalence"].items():
            f32 = v["float32_error_vs_float64"][family]
            lines.append(f"  {family:<19} float64 normwise diff {c['norm_rel']:.1e}; float32 normwise error vs "
                         f"float64: original {f32['original']:.1e} (worst of {len(f32['original_variants'])} "
                         f"run(s)), optimised {f32['optimised']:.1e} (limit {f32['limit']:.1e})")
        lines.append("  verified: " + ("ok" if v["ok"] else "FAILED"))
    if args.onnx:
        lines.append(f"  ONNX written to {data['onnx']}")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Eager vs compiled vs optimised vs optimised+compiled (and tuned), interleaved: medians, ratios, roofline."""
    from branchgraph.bench import bench
    from branchgraph.graph import parse_input_size

    size = parse_input_size(args.input) if args.input else None
    if args.parallel:
        from branchgraph.bench import bench_parallel
        from branchgraph.train.setup import resolve_device

        device = str(resolve_device(args.device))
        parallel_result = bench_parallel(args.model, args.mode, args.batches, size, rounds=args.rounds,
                                         workers=args.workers, device=device, model_kwargs=args.model_kwargs)
        _emit(args, parallel_result.to_dict(), parallel_result.to_text())
        return 0
    result = bench(args.model, args.mode, args.batch, size, rounds=args.rounds, compile=not args.no_compile,
                   passes=_passes(args.passes), tune=args.tune, seed=args.seed, model_kwargs=args.model_kwargs)
    _emit(args, result.to_dict(), result.to_text())
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    """Plan checkpointing under a budget; with --measure, run steps of the plain and planned model to check it."""
    import torch

    from branchgraph.memory import compare_variants, plan, table

    if args.budget is None and args.peak is None:
        raise ConfigError("memory needs --budget (kept bytes), --peak (the step's peak), or both")
    torch.manual_seed(args.seed)
    model, size, classes = _model(args)
    example = torch.randn(args.batch, *size)
    planned, p = plan(model, example, args.budget, peak=args.peak, cost=args.cost,
                      saving_ops=not args.no_saving_ops)
    data: dict[str, Any] = {"model": args.model, "plan": p.to_dict()}
    text = f"{args.model}, batch {args.batch}, input {list(size)}\n{p.to_text()}"
    if args.measure or args.rounds:
        target = torch.randint(0, classes or 1, (args.batch,))
        results = compare_variants({"plain": model, "planned": planned}, example, target, rounds=args.rounds)
        data["measured"] = [r.to_dict(results[0]) for r in results]
        text += "\nmeasured (bytes the forward kept for backward, the step's heap peak):\n" + table(results)
        text += (f"\npeak: predicted {p.predicted_peak_bytes / 2**20:.1f} MiB, measured "
                 f"{results[1].peak_bytes / 2**20:.1f} MiB")
    _emit(args, data, text)
    return 0


def cmd_branches(args: argparse.Namespace) -> int:
    """Per block: the fork's gradient, each branch's contribution and share, and the sum identity checked."""
    import torch

    from branchgraph.analysis import fork_gradients

    torch.manual_seed(args.seed)
    model, size, _ = _model(args)
    model = model.double()
    reports = fork_gradients(model, torch.randn(args.batch, *size, dtype=torch.float64), seed=args.seed)
    worst = max((r.sum_error for r in reports), default=0.0)
    lines = [f"{args.model}, input {[args.batch, *size]}, float64: {len(reports)} forks; the branches' gradients "
             f"add up to each fork's within {worst:.1e} (normwise)"]
    for r in reports:
        lines.append(f"  {r.block:<28} fork {r.fork:<16} |g| {r.grad_norm:.3e}  imbalance {r.imbalance:6.2f}")
        lines += [f"      {b.name:<34} |g_i| {b.grad_norm:.3e}  share {b.share:6.1%}" for b in r.branches]
    _emit(args, {"model": args.model, "input": [args.batch, *size], "max_sum_error": worst,
                 "forks": [r.to_dict() for r in reports]}, "\n".join(lines))
    return 0 if worst < 1e-9 else 1


def cmd_prune(args: argparse.Namespace) -> int:
    """Structured channel pruning of a trained run, fine-tuned, with accuracy before and after."""
    from branchgraph.train.prune_run import prune_and_finetune

    r = prune_and_finetune(args.run, args.amount, args.epochs, args.lr, progress=not args.quiet)
    acc, params, macs = r["test_acc"], r["params"], r["macs"]
    text = (f"pruned {r['pruned_chains']} conv chains by {r['amount']:.0%}: params {params['original']:,} -> "
            f"{params['pruned']:,}, MACs {macs['original']:,} -> {macs['pruned']:,}\n"
            f"test accuracy: {acc['original']:.4f} trained, {acc['pruned']:.4f} pruned, {acc['finetuned']:.4f} after "
            f"{r['epochs']} fine-tuning epoch(s) (run {r['finetune_run_dir']})")
    _emit(args, r, text)
    return 0


def _add_input_flags(
    p: argparse.ArgumentParser, batch: int = 1, batch_help: str = "batch size of the measured step"
) -> None:
    p.add_argument("--input", metavar="C,H,W", help="input size without the batch (default: the registry's; "
                   "required for a model spec)")
    p.add_argument("--model-kwargs", type=lambda t: _json_object(t, "--model-kwargs"), default=None,
                   metavar="JSON", help='JSON object of options for the model\'s factory, e.g. \'{"width": 0.5}\'')
    p.add_argument("--batch", type=_positive_int, default=batch, help=f"{batch_help} (default {batch})")


def build_parser() -> argparse.ArgumentParser:
    """The full command-line interface."""
    parser = _Parser(prog="branchgraph", description="Understand, optimise and train multi-branch networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=func)
        return p

    add("models", cmd_models, "list the registered models")

    p = add("train", cmd_train, "train on Fashion-MNIST")
    p.add_argument("--preset", choices=("fast", "d2l", "accurate"), help="starting settings (default fast)")
    p.add_argument("--config", help="JSON file of settings, applied after the preset")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for key, kw in TRAIN_FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, **kw)
    for key in TRAIN_SWITCHES:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, action=argparse.BooleanOptionalAction)

    p = add("summary", cmd_summary, "params, MACs, shapes and measured saved-for-backward bytes per module/branch")
    p.add_argument("model", help=MODEL_HELP)
    _add_input_flags(p)
    p.add_argument("--depth", type=_positive_int, default=None, help="nesting depth of the module rows")

    p = add("compare", cmd_compare, "two models side by side with ratios")
    p.add_argument("model_a", metavar="A", help=MODEL_HELP)
    p.add_argument("model_b", metavar="B", help=MODEL_HELP)
    _add_input_flags(p)

    p = add("graph", cmd_graph, "draw the computation graph (.svg, .dot or self-contained .html)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--output", required=True, help="output file: .svg, .dot/.gv or .html")
    _add_input_flags(p)

    p = add("optimize", cmd_optimize, "apply verified graph passes (and optionally export ONNX)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--passes", help="comma-separated passes (default: the mode's lossless set); "
                   "prune, fold_bn, fuse_parallel, inplace, layout, precision")
    p.add_argument("--mode", choices=("train", "eval"), default="train")
    _add_input_flags(p, batch=2, batch_help="batch of the verification input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-verify", action="store_true", help="skip the verification against the original")
    p.add_argument("--tune", action="store_true", help="choose precision (bf16 only where native), layout and "
                   "the pass set by timing each on this machine at --tune-batch; cached per machine and model")
    p.add_argument("--tune-batch", type=_positive_int, default=128, help="batch size the --tune timings use "
                   "(default 128)")
    p.add_argument("--onnx", metavar="FILE", help="export the optimised eval model to this ONNX file")
    p.add_argument("--show", type=int, default=3, help="changes listed per pass (default 3)")

    p = add("prune", cmd_prune, "prune channels of a trained run by magnitude (lossy), then fine-tune")
    p.add_argument("run", metavar="RUN_DIR", help="run directory made by 'branchgraph train'")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of prunable channels to remove (0..1)")
    p.add_argument("--epochs", type=_positive_int, default=1, help="fine-tuning epochs (default 1)")
    p.add_argument("--lr", type=_positive_float, default=None, help="peak fine-tuning lr (default: run's / 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("bench", cmd_bench, "time eager, torch.compile, optimised and optimised+compiled, interleaved")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--mode", choices=("train", "eval"), default="eval")
    _add_input_flags(p, batch=128, batch_help="batch size of the timed calls")
    p.add_argument("--rounds", type=_positive_int, default=10)
    p.add_argument("--passes", help="comma-separated passes (default: the mode's lossless set)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--tune", action="store_true", help="add the variant chosen by timing precisions (bf16 only "
                   "where native), layouts and {eager, --passes} on this machine (and it compiled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's weights and the timed batch")
    p.add_argument("--parallel", action="store_true",
                   help="instead: the model's branches run one after another vs concurrently, at each of --batches")
    p.add_argument("--batches", type=_positive_ints, default=(1, 8, 32, 128),
                   help="comma-separated batch sizes for --parallel (default 1,8,32,128)")
    p.add_argument("--workers", type=_positive_int, help="threads per block for --parallel on CPU (default: one per "
                   "branch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device for --parallel")

    p = add("memory", cmd_memory, "plan activation checkpointing under a memory budget (and measure it)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--budget", help="bound the activations kept for backward: a fraction of the plain "
                   "model's (0.1) or a size (300MiB)")
    p.add_argument("--peak", help="bound the step's predicted peak (alone or with --budget): a fraction of the "
                   "plain step's (0.35) or a size (300MiB)")
    p.add_argument("--no-saving-ops", action="store_true", help="do not let max pools keep 1-byte offsets and "
                   "lone ReLUs 1-byte masks (exact; chosen only where they beat recomputation)")
    _add_input_flags(p, batch=32, batch_help="training batch size the plan is for")
    p.add_argument("--cost", choices=("time", "macs"), default="time",
                   help="what the plan minimises: measured forward time of the recomputed layers, or their MACs")
    p.add_argument("--measure", action="store_true", help="measure a step of the plain and the planned model")
    p.add_argument("--rounds", type=int, default=0, help="also time N interleaved SGD steps of both (default 0)")
    p.add_argument("--seed", type=int, default=0)

    p = add("branches", cmd_branches, "how each block's branches share the gradient at its fork (float64)")
    p.add_argument("model", help=MODEL_HELP)
    _add_input_flags(p, batch=2, batch_help="batch of the measured step")
    p.add_argument("--seed", type=int, default=0)

    p = add("eval", cmd_eval, "evaluate a trained run's checkpoint")
    p.add_argument("run", metavar="RUN_DIR", help="run directory (or checkpoint file)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=_positive_int, default=None)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="run inference in this precision instead of the run's own")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line on stderr and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BranchgraphError as exc:
        message = str(exc).strip().splitlines()
        text = message[0] if message else type(exc).__name__
        if exc.param:  # the library names its parameter; the user typed a flag
            flag = FLAGS.get(exc.param, "--" + exc.param.replace("_", "-"))
            text = re.sub(rf"\b{re.escape(exc.param)}\b", flag, text, count=1)
        print(f"branchgraph: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"branchgraph: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("branchgraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
