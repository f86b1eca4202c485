"""torch.compile's activation_memory_budget against eager training, the reference for branchgraph's planner.

Each budget is compiled in its own process (dynamo would reuse one compilation across budgets); in that process
the eager and the compiled model train interleaved. Reported per budget: the heap the forward kept for backward,
the step's peak (a thread polling the heap every 0.2 ms: compiled kernels do not pass Python's dispatcher), and
median step times; compilation takes minutes on a CPU.
Run: python benchmarks/bench_compile_memory.py [--model googlenet-d2l] [--batch 128] [--size 96]
     [--budgets 1.0 0.5 0.1] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.hardware import describe_text
from branchgraph.heap import heap_in_use
from branchgraph.models import create_model
from branchgraph.timing import make_runner, time_interleaved

MIB = 2**20


def polled_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(heap the forward kept, the step's peak above the start), polled by a thread."""
    gc.collect()
    base = heap_in_use() or 0
    top = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            top[0] = max(top[0], heap_in_use() or 0)
            time.sleep(0.0002)

    thread = threading.Thread(target=poll)
    thread.start()
    loss = F.cross_entropy(net(x), y)
    kept = (heap_in_use() or 0) - base
    loss.backward()
    done.set()
    thread.join()
    net.zero_grad(set_to_none=True)
    return kept, top[0] - base


def one(args: argparse.Namespace) -> dict[str, Any]:
    """This process's budget: eager vs compiled, memory then interleaved times."""
    torch.manual_seed(args.seed)
    model = create_model(args.model).train()
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    eager, compiled = model, torch.compile(copy.deepcopy(model))
    start = time.perf_counter()
    with torch._functorch.config.patch(activation_memory_budget=args.one):
        F.cross_entropy(compiled(x), y).backward()  # compiles forward and backward under the budget
    compile_s = time.perf_counter() - start
    found: dict[str, Any] = {"budget": args.one, "compile_s": compile_s}
    for name, net in (("eager", eager), ("compiled", compiled)):
        polled_step(net, x, y)  # warm-up
        found[name] = dict(zip(("kept", "peak"), polled_step(net, x, y), strict=True))
    medians = time_interleaved({n: make_runner(net, x, y, "train") for n, net in (("eager", eager),
                                                                                   ("compiled", compiled))},
                               args.rounds, warmup=1)
    for name, median in medians.items():
        found[name]["median_s"] = median
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--budgets", type=float, nargs="*", default=[1.0, 0.5, 0.1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # internal: run this budget, print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    rows = []
    for budget in args.budgets:
        cmd = [sys.executable, __file__, "--one", str(budget), "--model", args.model, "--batch", str(args.batch),
               "--size", str(args.size), "--rounds", str(args.rounds), "--seed", str(args.seed)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        e, c = r["eager"], r["compiled"]
        print(f"activation_memory_budget {budget:g}: kept {c['kept'] / MIB:.1f} MiB ({c['kept'] / e['kept']:.1%} of "
              f"eager), peak {c['peak'] / MIB:.1f} MiB ({c['peak'] / e['peak']:.1%}), step "
              f"{c['median_s']:.3f} s ({c['median_s'] / e['median_s']:.2f}x eager); compiled in "
              f"{r['compile_s']:.0f} s", flush=True)
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {args.rounds} interleaved rounds; "
          f"{describe_text()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
