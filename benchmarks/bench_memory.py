"""Budgeted checkpointing against plain training and uniform checkpoint_sequential, all measured in one process
(memory per variant, SGD step times interleaved).

For each budget (kept bytes) and each peak budget: the bytes the forward keeps for backward, the step's measured
peak (sampled after every operator) against the planner's prediction, and the median step time; then the
forward's share of a plain step (recomputing a fraction f of the forward costs about 1 + f x that share).
Run: python benchmarks/bench_memory.py [--model googlenet-d2l|inception-v3-like] [--batch 128] [--size 96]
     [--channels-last] [--rounds 3] [--budgets 0.5 0.25 0.1] [--peaks 0.4] [--both 0.1:0.4] [--least SECONDS]
     [--lossy 0.5 0.1:0.35] [--region-limits 0.2 0.25] [--heap keep|system] [--json out.json]
With --least, the integer program also runs for that long at each kept budget with no limit on a region's size:
the least recomputation it finds (a share of the forward's time) is what any plan at that budget costs at least.
With --lossy, each kept budget given there (KEPT, or KEPT:PEAK) is planned with lossy bf16 saves (not exact; the
plan prints the float64 gradient change). With --region-limits, each kept budget is also planned with no region
rematerialising more than each of those shares of plain's saved bytes (what trades recomputation for peak).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from branchgraph.errors import ConfigError
from branchgraph.hardware import describe_text
from branchgraph.heap import HEAP_POLICIES, apply_heap_policy
from branchgraph.memory import compare_variants, plan, table
from branchgraph.memory import ilp as exact
from branchgraph.memory.checkpointing import traced_problem
from branchgraph.memory.search import Planner
from branchgraph.models import create_model
from results import TEST_NETS, invocation, variant_rows, write  # benchmarks/, the script's folder, is on sys.path


class UniformCheckpoint(nn.Module):
    """torch's checkpoint_sequential over the model's top-level children, ``segments`` equal segments."""

    def __init__(self, model: nn.Sequential, segments: int) -> None:
        super().__init__()
        self.model, self.segments = model, segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        return checkpoint_sequential(self.model, self.segments, x, use_reentrant=False)


def forward_shares(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    """Per plain SGD step (after one warm-up): the forward's share of the step's time."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    shares = []
    for step in range(steps + 1):
        start = time.perf_counter()
        out = net(x)
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        forward = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:
            shares.append((forward - start) / (time.perf_counter() - start))
    return shares


def least_recomputation(model: nn.Module, x: torch.Tensor, budget: float, seconds: float) -> float | None:
    """The integer program's least recomputation at a kept ``budget`` (fraction), as a share of the forward's
    time; None if it finds no plan in ``seconds``."""
    traced = traced_problem(copy.deepcopy(model), x, saving=True)
    if traced is None:
        return None
    problem = traced[0]
    planner = Planner(problem.saves, problem.masks, problem.inputs, problem.seconds, problem.shrinks, problem.inner)
    solved = exact.solve(planner.candidates(), int(budget * problem.saves.total()), seconds=seconds)
    return None if solved is None else float(planner.cost[solved].sum()) / problem.forward_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l", help="a registry name or inception-v3-like")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.5, 0.25, 0.1])
    parser.add_argument("--peaks", type=float, nargs="*", default=[0.4])
    parser.add_argument("--both", nargs="*", default=[], metavar="KEPT:PEAK",
                        help="plans under a kept budget and a peak budget at once, e.g. 0.1:0.4")
    parser.add_argument("--least", type=float, metavar="SECONDS",
                        help="also run the integer program this long at each kept budget (the least recomputation)")
    parser.add_argument("--lossy", nargs="*", default=[], metavar="KEPT[:PEAK]",
                        help="budgets planned with lossy bf16 saves")
    parser.add_argument("--region-limits", type=float, nargs="*", default=[], metavar="SHARE",
                        help="kept budgets also planned with regions bounded by each share of plain's saved bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heap", choices=HEAP_POLICIES, default="keep", help="branchgraph.heap policy (as train)")
    parser.add_argument("--json")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    apply_heap_policy(args.heap)
    torch.manual_seed(args.seed)
    if args.model == "inception-v3-like":
        model: nn.Module = create_model(f"{TEST_NETS}:InceptionV3Like", in_chans=1)
    else:
        model = create_model(args.model)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    variants: dict[str, nn.Module] = {"plain": model}
    plans = {}
    limits: list[dict[str, float | str]] = [*({"budget": b} for b in args.budgets), *({"peak": p} for p in args.peaks)]
    for pair in args.both:
        kept, peak = pair.split(":")
        limits.append({"budget": float(kept), "peak": float(peak)})
    limits += [{"budget": b, "region_limit": r} for b in args.budgets for r in args.region_limits]
    for spec in args.lossy:
        kept, _, peak = spec.partition(":")
        limits.append({"budget": float(kept), **({"peak": float(peak)} if peak else {}), "lossy_saves": "bf16"})
    for limit in limits:
        name = "plan " + " ".join(f"{key} {value:g}" if isinstance(value, float) else "lossy"
                                  for key, value in limit.items())
        try:
            planned, p = plan(model, x, **limit)
        except ConfigError as exc:  # an unmeetable budget: one line, and the other variants still run
            print(f"{name}: {exc}", flush=True)
            continue
        variants[name], plans[name] = planned, p
        print(f"{name}: {p.to_text()}", flush=True)
    if isinstance(model, nn.Sequential):
        for segments in (2, 4, len(model)):
            variants[f"checkpoint_sequential {segments}"] = UniformCheckpoint(model, segments)
    results = compare_variants(variants, x, y, rounds=args.rounds)
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"\n{args.model}, batch {args.batch}, {args.size}x{args.size}, {layout}, {args.rounds} interleaved rounds; "
          f"{describe_text()}")
    print(table(results))
    for name, p in plans.items():
        measured = next(r for r in results if r.name == name)
        print(f"{name}: kept predicted {p.saved_bytes / 2**20:.1f} MiB, measured {measured.forward_bytes / 2**20:.1f} "
              f"MiB; peak predicted {p.predicted_peak_bytes / 2**20:.1f} MiB, measured "
              f"{measured.peak_bytes / 2**20:.1f} MiB")
    shares = forward_shares(model, x, y, max(args.rounds, 5))
    print(f"forward share of a plain step: median {statistics.median(shares):.2f} ({min(shares):.2f}-"
          f"{max(shares):.2f}) over {len(shares)} steps")
    least = {}
    for budget in args.budgets if args.least else []:
        least[budget] = least_recomputation(model, x, budget, args.least)
        found = "none found" if least[budget] is None else f"{least[budget]:.2f} of the forward's time"
        print(f"least recomputation at budget {budget:g} (integer program, {args.least:g} s): {found}")
    if args.results:
        header, rows = variant_rows(results)
        for row in rows:
            p = plans.get(row[0])
            row += [f"{p.saved_bytes / 2**20:.1f}", f"{p.predicted_peak_bytes / 2**20:.1f}"] if p else ["-", "-"]
        write(f"memory-{args.model}", f"Checkpoint plans of {args.model}, batch {args.batch}, {args.size}x{args.size}, "
              f"{layout}", invocation(), [*header, "predicted kept MiB", "predicted peak MiB"], rows,
              {"plans": {n: p.to_dict() for n, p in plans.items()},
               "results": [r.to_dict(results[0]) for r in results], "forward_shares": shares})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"plans": {n: p.to_dict() for n, p in plans.items()},
                       "results": [r.to_dict(results[0]) for r in results], "forward_shares": shares,
                       "least_recomputation": least}, fh, indent=2)


if __name__ == "__main__":
    main()
