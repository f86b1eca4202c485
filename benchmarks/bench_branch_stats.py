"""Overhead of --branch-stats on a training step, and the step time of the branch options.

googlenet-fmnist (the default training model, channels_last as the trainer runs it) at batch 128, 28x28, SGD
steps interleaved in this process; medians and ratios. First the statistics: off, recorder built but not armed,
and armed on every step (three copies with the same weights). A run with --branch-stats K arms the recorder on one
step in K, so its overhead is the armed ratio's excess over K. Then the README experiment's variants: plain,
gated, BatchNorm and LayerNorm per branch.
Run: python benchmarks/bench_branch_stats.py [--batch 128] [--rounds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.analysis.branch_stats import BranchStats
from branchgraph.models import create_model
from branchgraph.timing import time_interleaved
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, stats: BranchStats | None,
          armed: bool) -> Callable[[], None]:
    """One SGD step as the trainer takes it, recording branch statistics when ``armed``."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with stats.recording() if stats is not None and armed else nullcontext():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if stats is not None and armed:
            stats.collect()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-fmnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = create_model(args.model).to(memory_format=torch.channels_last).train()
    x = torch.randn(args.batch, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    nets = {name: copy.deepcopy(base) for name in ("off", "idle", "armed")}
    runs = {
        "off": _step(nets["off"], x, y, None, False),
        "idle": _step(nets["idle"], x, y, BranchStats(nets["idle"]), False),
        "armed": _step(nets["armed"], x, y, BranchStats(nets["armed"]), True),
    }
    medians = time_interleaved(runs, args.rounds, warmup=2)
    print(f"{args.model}, batch {args.batch}, 28x28, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name, seconds in medians.items():
        print(f"  {name:<6} {seconds * 1e3:8.1f} ms  {seconds / medians['off']:.3f}x off")
    excess = medians["armed"] / medians["off"] - 1
    print(f"  --branch-stats 1: +{excess:.1%} per step; --branch-stats 10: +{excess / 10:.2%}", flush=True)
    options = {"plain": {}, "gated": {"gates": True}, "batch-norm": {"branch_norm": "batch"},
               "layer-norm": {"branch_norm": "layer"}}
    variants = {}
    for name, kwargs in options.items():
        torch.manual_seed(0)
        net = create_model(args.model, **kwargs).to(memory_format=torch.channels_last).train()
        variants[name] = _step(net, x, y, None, False)
    steps = time_interleaved(variants, args.rounds, warmup=2)
    print("branch options, training step:")
    for name, seconds in steps.items():
        print(f"  {name:<10} {seconds * 1e3:8.1f} ms  {seconds / steps['plain']:.3f}x plain")
    if args.results:
        rows = [[f"branch statistics {name}", f"{s * 1e3:.1f}", f"{s / medians['off']:.3f}x off"]
                for name, s in medians.items()]
        rows += [[f"branch option {name}", f"{s * 1e3:.1f}", f"{s / steps['plain']:.3f}x plain"]
                 for name, s in steps.items()]
        write("branch-stats", f"{args.model} training step with branch statistics and branch options, batch "
              f"{args.batch}", invocation(), ["variant", "median ms", "ratio"], rows,
              {"median_s": medians, "options_median_s": steps, "rounds": args.rounds})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch": args.batch, "rounds": args.rounds,
                       "median_s": medians, "options_median_s": steps}, f, indent=2)


if __name__ == "__main__":
    main()
