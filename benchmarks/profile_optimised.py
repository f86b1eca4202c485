"""Where the time of an optimised model goes: the top operators of two profiled iterations.

    python benchmarks/profile_optimised.py [--model googlenet-d2l] [--batch 128] [--mode eval|train|both]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import branchgraph as bg
from branchgraph.models import model_info
from branchgraph.passes import optimize
from branchgraph.timing import make_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--mode", choices=("eval", "train", "both"), default="both")
    parser.add_argument("--top", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, *model_info(args.model).input_size)
    y = torch.randint(0, model_info(args.model).num_classes or 1, (args.batch,))
    for mode in ("eval", "train") if args.mode == "both" else (args.mode,):
        model = bg.create_model(args.model).train(mode == "train")
        optimised, _ = optimize(model, x[:2], mode=mode, verify=False)
        run = make_runner(optimised, x, y, mode)
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                run()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"{args.model} {mode}, batch {args.batch}: {total / 2 / 1000:.0f} ms of operator time per iteration")
        for e in events[:args.top]:
            print(f"  {e.key:<45} {e.self_cpu_time_total / total:6.1%}")


if __name__ == "__main__":
    main()
