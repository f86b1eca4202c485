"""The CLI's commands: each parses nothing, calls the Python API and prints text or JSON (``--json``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from branchgraph.errors import ConfigError
from branchgraph.heap import apply_heap_policy


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered models with their input size and parameter count."""
    from branchgraph.models import model_table

    rows = model_table()
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{width}}  {'input':>11}  {'classes':>7}  {'params':>12}  description"]
    lines += [
        f"{r['name']:<{width}}  {'x'.join(map(str, r['input_size'])):>11}  {r['num_classes'] or '-':>7}  "
        f"{r['params']:>12,}  {r['description']}" for r in rows
    ]
    _emit(args, rows, "\n".join(lines))
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given as flags (every flag of ``train`` named after a TrainConfig field)."""
    from branchgraph.training import TrainConfig

    fields = (f.name for f in dataclasses.fields(TrainConfig))
    return {key: getattr(args, key) for key in fields if getattr(args, key, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model (preset, then config file, then flags), or continue a run with --resume."""
    from branchgraph.api_runs import resume, train

    overrides = _train_overrides(args)
    if args.resume:
        extra = sorted(set(overrides) - {"epochs", "data_dir", "heap", "model", "data"})
        if extra or args.config or args.preset:
            named = ", ".join(f"--{k.replace('_', '-')}" for k in extra) or "--preset/--config"
            raise ConfigError(f"--resume continues the run's saved settings; drop {named} (only --epochs, --heap "
                              "and --data-dir may change)")
        result = resume(args.resume, progress=not args.quiet, epochs=overrides.get("epochs"),
                        heap=overrides.get("heap"), data_dir=overrides.get("data_dir"), model=overrides.get("model"),
                        trust_checkpoint=args.trust_checkpoint, data=overrides.get("data"))
    else:
        result = train(preset=args.preset or "fast", config=args.config, progress=not args.quiet, **overrides)
    if not result.is_main:  # under torchrun only rank 0 reports, so --json stays one document
        return 0
    _emit(args, result.to_dict(), result.to_text())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's checkpoint on a split."""
    from branchgraph.api_runs import evaluate

    result = evaluate(args.run, split=args.split, data_dir=args.data_dir, limit=args.limit, precision=args.precision,
                      model=args.model, trust_checkpoint=args.trust_checkpoint, data=args.data)
    text = (f"{result['model']} after {result['epochs_trained']} epochs: {result['split']} accuracy "
            f"{result['accuracy']:.4f}, loss {result['loss']:.4f} ({result['samples']} samples, "
            f"{result['precision']})")
    _emit(args, result, text)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Per-module and per-branch params, MACs and measured saved bytes of a registry model."""
    from branchgraph.api import summary

    s = summary(args.model, args.input, batch=args.batch, seed=args.seed, model_kwargs=args.model_kwargs)
    _emit(args, s.to_dict(args.depth), s.to_text(args.depth))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two models side by side, with B / A ratios."""
    from branchgraph.api import compare

    c = compare(args.model_a, args.model_b, args.input, batch=args.batch, seed=args.seed,
                model_kwargs=args.model_kwargs)
    _emit(args, c.to_dict(), c.to_text())
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    """Draw the computation graph with forks, joins and branches."""
    from branchgraph.api import draw

    d = draw(args.model, args.input, args.output, batch=args.batch, seed=args.seed, model_kwargs=args.model_kwargs)
    _emit(args, d.to_dict(), d.to_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the interactive report page of a model (and a plan, and branch shares)."""
    from branchgraph.api import report

    path = report(args.model, args.input, args.output, batch=args.batch, budget=args.budget, peak=args.peak,
                  branches=args.branches, seed=args.seed, model_kwargs=args.model_kwargs)
    _emit(args, {"model": args.model, "output": str(path)}, f"wrote {path}: open it in a browser")
    return 0


def _input_size(args: argparse.Namespace) -> tuple[int, ...]:
    """The input size the API ran the command's model at: --input, else the registry's (the API checked it)."""
    from branchgraph.models import model_info

    return tuple(args.input or model_info(args.model).input_size)


def _passes(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _tune_options(args: argparse.Namespace) -> dict[str, Any]:
    """The tuner's options given as flags: engines, --retune, --compile-budget, and int8's calibration."""
    return {"engines": _passes(args.engines), "retune": args.retune, "compile_budget": args.compile_budget,
            "calibration": args.calibration, "calibration_size": args.calibration_size,
            "max_accuracy_drop": args.max_accuracy_drop, "trust_checkpoint": args.trust_checkpoint}


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run passes on a model, verify the result; with --tune choose the fastest verified engine (and --out write
    it for deployment); optionally export it to ONNX."""
    from branchgraph.api import optimize
    from branchgraph.tune import TunedReport

    _, report = optimize(args.model, args.input, passes=_passes(args.passes), mode=args.mode, batch=args.batch,
                         seed=args.seed, model_kwargs=args.model_kwargs, verify=not args.no_verify, tune=args.tune,
                         tune_batch=args.tune_batch, out=args.out, onnx=args.onnx,
                         **(_tune_options(args) if args.tune else {"trust_checkpoint": args.trust_checkpoint}))
    data = report.to_dict() if isinstance(report, TunedReport) else report.to_dict() | {"tuning": None,
                                                                                        "deployed": None}
    text = report.to_text(args.show)
    from branchgraph.training.served_run import is_run

    shape = "" if is_run(args.model) and not args.input else f", input {[args.batch, *_input_size(args)]}"
    header = f"{args.model} ({args.mode} mode){shape}"
    _emit(args, data, header + ("\n" + text if text else ""))
    return 0


def cmd_bench_parallel(args: argparse.Namespace) -> int:
    """The model's branches run one after another vs concurrently (the parallel pass), at each batch size."""
    from branchgraph.api import bench_parallel
    from branchgraph.hardware import resolve_device

    apply_heap_policy(args.heap)
    result = bench_parallel(args.model, args.mode, args.batches, args.input, rounds=args.rounds,
                            workers=args.workers, device=str(resolve_device(args.device)),
                            model_kwargs=args.model_kwargs, seed=args.seed)
    _emit(args, result.to_dict(), result.to_text())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Eager vs compiled vs optimised vs optimised+compiled (and tuned), interleaved: medians, ratios, roofline."""
    from branchgraph.api import bench

    if args.peers and args.mode != "eval":
        raise ConfigError("--peers compares inference engines: use it with --mode eval")
    apply_heap_policy(args.heap)
    result = bench(args.model, args.mode, args.batch, args.input, rounds=args.rounds, compile=not args.no_compile,
                   passes=_passes(args.passes), tune=args.tune, seed=args.seed, model_kwargs=args.model_kwargs,
                   peers=args.peers, **_tune_options(args))
    _emit(args, result.to_dict(), result.to_text())
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    """Plan checkpointing under a budget (``branchgraph.plan``, the API's path); with --measure, run steps of the
    plain and planned model to check it."""
    from branchgraph.api import plan
    from branchgraph.memory import table

    apply_heap_policy(args.heap)
    _, p = plan(args.model, args.input, args.budget, peak=args.peak, batch=args.batch, seed=args.seed,
                model_kwargs=args.model_kwargs, cost=args.cost, saving_ops=not args.no_saving_ops,
                lossy_saves=args.lossy_saves, compare_rounds=args.rounds if args.measure else None)
    data: dict[str, Any] = {"model": args.model, "plan": p.to_dict()}
    text = f"{args.model}, batch {args.batch}, input {p.input_shape[1:]}\n{p.to_text()}"
    if p.compared is not None:
        results = p.compared
        data["measured"] = [r.to_dict(results[0]) for r in results]
        text += "\nmeasured (bytes the forward kept for backward, the step's heap peak):\n" + table(results)
        text += (f"\npeak: predicted {p.predicted_peak_bytes / 2**20:.1f} MiB, measured "
                 f"{results[1].peak_bytes / 2**20:.1f} MiB")
    _emit(args, data, text)
    return 0


def cmd_branches(args: argparse.Namespace) -> int:
    """Per block: the fork's gradient, each branch's contribution and share, and the sum identity checked."""
    from branchgraph.api import branches

    reports = branches(args.model, args.input, batch=args.batch, seed=args.seed, model_kwargs=args.model_kwargs)
    size = _input_size(args)
    worst = max((r.sum_error for r in reports), default=0.0)
    lines = [f"{args.model}, input {[args.batch, *size]}, float64: {len(reports)} forks; the branches' gradients "
             f"add up to each fork's within {worst:.1e} (normwise)"]
    lines += [r.to_text() for r in reports]
    _emit(args, {"model": args.model, "input": [args.batch, *size], "max_sum_error": worst,
                 "forks": [r.to_dict() for r in reports]}, "\n".join(lines))
    return 0 if worst < 1e-9 else 1


def cmd_prune(args: argparse.Namespace) -> int:
    """Structured channel pruning of a trained run, fine-tuned, with accuracy before and after."""
    from branchgraph.api_runs import prune

    r = prune(args.run, args.amount, args.epochs, lr=args.lr, progress=not args.quiet, model=args.model,
              trust_checkpoint=args.trust_checkpoint, data=args.data)
    acc, params, macs = r["test_acc"], r["params"], r["macs"]
    text = (f"pruned {r['pruned_chains']} conv chains by {r['amount']:.0%}: params {params['original']:,} -> "
            f"{params['pruned']:,}, MACs {macs['original']:,} -> {macs['pruned']:,}\n"
            f"test accuracy: {acc['original']:.4f} trained, {acc['pruned']:.4f} pruned, {acc['finetuned']:.4f} after "
            f"{r['epochs']} fine-tuning epoch(s) (run {r['finetune_run_dir']})")
    _emit(args, r, text)
    return 0
