"""Cost of the memory planner's saving ops against the ops they replace, forward + backward, both layouts.

``compact_max_pool2d`` against ``F.max_pool2d`` and ``masked_relu`` against ``torch.relu`` on googlenet-d2l's
shapes at batch 128 (the stem's pool at 96x96 input, 3x3 stride 2 and the branch pool, 3x3 stride 1), NCHW and
channels_last, interleaved in this process; the step ratio is the median of per-round ratios. The planner prices
these in place (``memory/unit_timing``); this prints what it will see.
Run: python benchmarks/bench_saving_ops.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from branchgraph.hardware import describe_text
from branchgraph.memory.regions.timing import forward_backward
from branchgraph.memory.saving_ops import compact_max_pool2d, masked_relu
from branchgraph.timing import interleaved_times, paired_ratios

CASES = {  # name: (input shape, plain op, saving op)
    "max_pool 3x3/2, 64x48x48": ((128, 64, 48, 48), lambda t: F.max_pool2d(t, 3, 2, 1),
                                 lambda t: compact_max_pool2d(t, 3, 2, 1)),
    "max_pool 3x3/1, 192x12x12": ((128, 192, 12, 12), lambda t: F.max_pool2d(t, 3, 1, 1),
                                  lambda t: compact_max_pool2d(t, 3, 1, 1)),
    "relu, 64x48x48": ((128, 64, 48, 48), torch.relu, masked_relu),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for layout in (torch.contiguous_format, torch.channels_last):
        for name, (shape, plain, saving) in CASES.items():
            x = torch.randn(shape).contiguous(memory_format=layout)
            grad = torch.randn_like(plain(x))
            runs = {"plain": forward_backward(plain, x, grad), "saving": forward_backward(saving, x, grad)}
            times = interleaved_times(runs, args.rounds, warmup=2)
            ratios = paired_ratios(times["saving"], times["plain"])
            row = {"case": name, "layout": "channels_last" if layout is torch.channels_last else "NCHW",
                   "plain_ms": statistics.median(times["plain"]) * 1e3,
                   "saving_ms": statistics.median(times["saving"]) * 1e3,
                   "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
            rows.append(row)
            print(f"{row['layout']:<13} {name:<27} plain {row['plain_ms']:7.1f} ms  saving {row['saving_ms']:7.1f} ms"
                  f"  {row['ratio']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    print(f"batch 128, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds; {describe_text()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
