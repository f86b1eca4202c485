"""Training-step throughput by precision and memory layout, variants interleaved in one process, and what
``--precision auto`` (branchgraph.tune) picks on this machine.

    python benchmarks/bench_train.py [--model googlenet-fmnist] [--batch 128] [--rounds 15]
        [--heap keep|system] [--json]

Each round times one optimiser step of every variant in turn, so machine noise hits all of them alike;
the table gives the median step time and its ratio to fp32 NCHW. bf16 rows run even where bf16 is emulated,
to show why the tuner leaves it out there.
"""

from __future__ import annotations

import argparse
import json

import torch

import branchgraph as bg
from branchgraph.hardware import describe, describe_text
from branchgraph.heap import HEAP_POLICIES, apply_heap_policy
from branchgraph.models import model_info
from branchgraph.timing import make_runner, time_interleaved
from branchgraph.tune import Candidate, build_candidate, tune
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path

VARIANTS = {
    "fp32 NCHW": Candidate("fp32", False),
    "fp32 channels_last": Candidate("fp32", True),
    "bf16 autocast NCHW": Candidate("bf16", False),
    "bf16 autocast channels_last": Candidate("bf16", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-fmnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    parser.add_argument("--heap", choices=HEAP_POLICIES, default="keep", help="branchgraph.heap policy (as train)")
    args = parser.parse_args()
    apply_heap_policy(args.heap)
    torch.manual_seed(0)
    model = bg.create_model(args.model).train()
    x = torch.randn(args.batch, *model_info(args.model).input_size)
    y = torch.randint(0, model_info(args.model).num_classes or 1, (args.batch,))
    runs = {}
    for variant, cand in VARIANTS.items():
        net, xv = build_candidate(model, x, "train", cand)
        runs[variant] = make_runner(net, xv, y, "train", autocast=cand.autocast)
    medians = time_interleaved(runs, args.rounds, args.warmup)
    base = medians["fp32 NCHW"]
    rows = [{"variant": v, "median_ms": 1000 * t, "images_per_s": args.batch / t, "speedup_vs_fp32_nchw": base / t}
            for v, t in medians.items()]
    chosen = tune(model, x, y, "train", cache=False).chosen.name
    if args.results:
        table = [[r["variant"], f"{r['median_ms']:.1f}", f"{r['images_per_s']:.0f}",
                  f"{r['speedup_vs_fp32_nchw']:.2f}x"] for r in rows]
        table.append([f"chosen by --precision auto: {chosen}", "", "", ""])
        write("train-precision", f"{args.model} training step by precision and layout, batch {args.batch}",
              invocation(), ["variant", "median ms", "images/s", "vs fp32 NCHW"], table,
              {"results": rows, "auto_chooses": chosen, "rounds": args.rounds})
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, "rounds": args.rounds, "machine": describe(),
                          "results": rows, "auto_chooses": chosen}, indent=2))
        return
    print(f"{args.model}, batch {args.batch}, {args.rounds} interleaved rounds on {describe_text()}")
    print(f"{'variant':<30} {'median ms':>10} {'img/s':>8} {'vs fp32 NCHW':>13}")
    for r in rows:
        speedup = r["speedup_vs_fp32_nchw"]
        print(f"{r['variant']:<30} {r['median_ms']:>10.1f} {r['images_per_s']:>8.0f} {speedup:>12.2f}x")
    print(f"--precision auto chooses here: {chosen}")


if __name__ == "__main__":
    main()
