"""Branches run one after another against concurrently (the ``parallel`` pass) on this machine's CPU.

googlenet-d2l (96x96) and googlenet (224x224), inference and training steps, at batch 1 and 128; each pair
interleaved in this process (``branchgraph.bench_parallel``); medians and the ratio sequential / parallel.
Run: python benchmarks/bench_parallel.py [--rounds 5] [--results]
"""

from __future__ import annotations

import argparse

import branchgraph as bg
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path

CASES = [("googlenet-d2l", "eval"), ("googlenet-d2l", "train"), ("googlenet", "eval"), ("googlenet", "train")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    rows, data = [], {}
    for model, mode in CASES:
        result = bg.bench_parallel(model, mode, batches, rounds=args.rounds)
        print(result, flush=True)
        record = result.to_dict()
        data[f"{model} {mode}"] = record
        rows += [[model, mode, batch, f"{r['sequential_ms']:.1f}", f"{r['parallel_ms']:.1f}", f"{r['speedup']:.2f}x"]
                 for batch, r in record["batches"].items()]
    if args.results:
        write("parallel", "Branches sequential vs concurrent (the parallel pass) on CPU", invocation(),
              ["model", "mode", "batch", "sequential ms", "parallel ms", "speed-up"], rows, data)


if __name__ == "__main__":
    main()
