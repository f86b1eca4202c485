"""Budgeted checkpointing of googlenet-d2l against plain training and uniform checkpoint_sequential.

Measures, for budgets 1.0/0.5/0.25/0.1 and for checkpoint_sequential with 2..6 segments: the bytes the forward
keeps for backward, the step's peak, and the median SGD step time (all variants interleaved in this process).
Run: python benchmarks/bench_memory.py [--batch 128] [--size 96] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from branchgraph.memory import compare_variants, plan, table
from branchgraph.models import create_model


class UniformCheckpoint(nn.Module):
    """torch's checkpoint_sequential over the model's top-level children, ``segments`` equal segments."""

    def __init__(self, model: nn.Sequential, segments: int) -> None:
        super().__init__()
        self.model, self.segments = model, segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        return checkpoint_sequential(self.model, self.segments, x, use_reentrant=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    variants: dict[str, nn.Module] = {"plain": model}
    plans = {}
    for budget in args.budgets:
        planned, p = plan(model, x, budget)
        variants[f"plan {budget:g}"] = planned
        plans[budget] = p
        print(p.to_text(), flush=True)
    children = len(list(model.children()))
    for segments in range(2, children + 1):
        variants[f"checkpoint_sequential {segments}"] = UniformCheckpoint(model, segments)
    results = compare_variants(variants, x, y, rounds=args.rounds)
    print(f"\n{args.model}, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds ({platform.processor() or platform.machine()})")
    print(table(results))
    for budget, p in plans.items():
        measured = next(r for r in results if r.name == f"plan {budget:g}")
        print(f"plan {budget:g}: predicted kept {p.saved_bytes / 2**20:.1f} MiB, measured "
              f"{measured.forward_bytes / 2**20:.1f} MiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"plans": {str(b): p.to_dict() for b, p in plans.items()},
                       "results": [r.to_dict(results[0]) for r in results]}, fh, indent=2)


if __name__ == "__main__":
    main()
