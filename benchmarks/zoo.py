"""Run ``summary``, ``optimize`` (eval and train mode), ``branches`` and ``memory`` over timm models with branches
of every kind, as a user would from the CLI, and print one row per model: what each command found, and whether any
failed.

Every command runs in a process of its own (``python -m branchgraph.cli ... --json``). A failure is a nonzero
exit code other than a one-line user error, a traceback, an optimisation that does not verify, or a memory plan
that was not verified. Needs timm (``pip install 'branchgraph[timm]'``, with a torchvision built for the installed
torch); ``make test-zoo`` runs it. Exit code 1 when anything failed, 2 when timm is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (timm name, input size): timm's families with branches of every kind (concatenations, residuals, SE gates,
# channel splits, selective kernels, multi-resolution fusion)
MODELS: list[tuple[str, str]] = [
    ("inception_v3", "3,299,299"), ("densenet121", "3,224,224"), ("dpn68", "3,224,224"),
    ("res2net50_14w_8s", "3,224,224"), ("resnext50_32x4d", "3,224,224"), ("selecsls42b", "3,224,224"),
    ("skresnet18", "3,224,224"), ("dla34", "3,224,224"), ("hrnet_w18_small", "3,224,224"),
    ("ghostnet_100", "3,224,224"), ("efficientnet_b0", "3,224,224"), ("mixnet_s", "3,224,224"),
    ("regnety_002", "3,224,224"), ("convnext_atto", "3,224,224"), ("mobilenetv3_small_100", "3,224,224"),
    # reparameterisable multi-branch blocks (their strided 1x1 stems train in NCHW), attention and hybrids,
    # split-attention, grouped and dense aggregation
    ("repvgg_a0", "3,224,224"), ("mobileone_s0", "3,224,224"), ("gernet_s", "3,224,224"), ("fastvit_t8", "3,256,256"),
    ("vit_tiny_patch16_224", "3,224,224"), ("mobilevit_xxs", "3,256,256"), ("efficientvit_b0", "3,224,224"),
    ("resnest14d", "3,224,224"), ("rexnet_100", "3,224,224"), ("hgnetv2_b0", "3,224,224"),
    ("ese_vovnet19b_dw", "3,224,224"), ("ghostnetv2_100", "3,224,224"), ("edgenext_xx_small", "3,256,256"),
]
COMMANDS: dict[str, list[str]] = {
    "summary": ["summary", "--batch", "2"],
    "optimize": ["optimize", "--mode", "eval", "--batch", "2"],
    "optimize-train": ["optimize", "--mode", "train", "--batch", "2"],
    "branches": ["branches", "--batch", "2"],
    "memory": ["memory", "--batch", "4", "--budget", "0.25"],
}


def run(command: str, model: str, size: str, timeout: float) -> tuple[dict[str, Any] | None, str, float]:
    """The command's JSON (None when it failed) and what went wrong ('' when nothing), and its seconds."""
    args = [sys.executable, "-m", "branchgraph.cli", *COMMANDS[command][:1], f"timm:{model}", "--input", size,
            *COMMANDS[command][1:], "--json"]
    started = time.perf_counter()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if "Traceback" in done.stderr:
        return None, "traceback: " + done.stderr.strip().splitlines()[-1], seconds
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return None, f"exit {done.returncode}: {lines[-1] if lines else ''}", seconds
    return json.loads(done.stdout), "", seconds


def figures(command: str, data: dict[str, Any]) -> tuple[str, str]:
    """(the cell for the table, what failed or '') from a command's JSON."""
    if command == "summary":
        total = data["total"]
        return f"{total['params'] / 1e6:.2f} M params, {total['forward_macs'] / 1e9:.2f} GMACs", ""
    if command.startswith("optimize"):
        verification = data["verification"]
        worst = max(c["norm_rel"] for c in verification["float64_equivalence"].values())
        captured = ", torch.export" if data.get("captured") == "export" else ""
        if command == "optimize-train":
            layout = next((p for p in data["passes"] if p["name"] == "layout"), {"skipped": []})
            nchw = sum("kept NCHW" in s for s in layout["skipped"])
            cell = f"float64 {worst:.1e} (outputs, gradients, step), {nchw} convs kept NCHW{captured}"
        else:
            folded = next((p for p in data["passes"] if p["name"] == "fold_bn"), {"changed": [], "skipped": []})
            cell = f"float64 {worst:.1e}, {len(folded['changed'])} BN folded, {len(folded['skipped'])} kept{captured}"
        return cell, "" if verification["ok"] else "does not verify"
    if command == "branches":
        return f"{len(data['forks'])} forks, sums within {data['max_sum_error']:.0e}", ""
    plan = data["plan"]
    cell = (f"{len(plan['regions'])} regions, kept {plan['saved_fraction']:.0%}, gradients within "
            f"{plan['grad_change']:.0e}" if plan.get("grad_change") is not None else "not verified")
    return cell, "" if plan.get("grad_change") is not None else "plan not verified"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated timm names (default: the list in this file)")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated, of " + ", ".join(COMMANDS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per command (default 600)")
    parser.add_argument("--json", type=Path, help="also write every command's result to this file")
    parser.add_argument("--no-results", action="store_true", help="do not write docs/results/zoo-<isa>.{json,md}")
    args = parser.parse_args()
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or timm's own import of a torchvision that does not fit this torch
        print(f"zoo: timm is not importable in {sys.executable} ({type(exc).__name__}: {exc}); install it with "
              "pip install 'branchgraph[timm]' (it needs a torchvision built for the installed torch), or run "
              "make test-zoo ZOO_PYTHON=/path/to/a/python/with/timm", file=sys.stderr)
        return 2
    sizes = dict(MODELS)
    models = args.models.split(",") if args.models else [name for name, _ in MODELS]
    commands = args.commands.split(",")
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {', '.join(unknown)}; choose from {', '.join(COMMANDS)}")
    print("| model | " + " | ".join(commands) + " |")
    print("|---|" + "---|" * len(commands))
    results: dict[str, dict[str, Any]] = {}
    rows: list[list[str]] = []
    failures = []
    for model in models:
        size = sizes.get(model, "3,224,224")
        cells = []
        for command in commands:
            data, problem, seconds = run(command, model, size, args.timeout)
            cell = ""
            if data is not None:
                cell, problem = figures(command, data)
            if problem:
                failures.append(f"{model} {command}: {problem}")
                cell = f"**FAILED** {problem}"[:160]
            cells.append(f"{cell} ({seconds:.0f} s)")
            results.setdefault(model, {})[command] = {"ok": not problem, "problem": problem, "seconds": seconds,
                                                      "result": data}
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)
        rows.append([model, *cells])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_results:
        from results import write

        summary = {m: {c: {k: v for k, v in r.items() if k != "result"} for c, r in found.items()}
                   for m, found in results.items()}
        page = write("zoo", "timm models through summary, optimize, branches and memory", "make test-zoo",
                     ["model", *commands], rows, summary)
        print(f"results: {page}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"{len(models)} models x {len(commands)} commands: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
