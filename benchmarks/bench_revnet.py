"""RevNet against its stored-activation twin and a depth-matched ResNet: activation memory and step time vs depth.

For 4, 8, 16 and 32 units per stage (RevNet-38's widths 32-64-112; the ResNet twin has twice the units, the
same number of conv layers): the bytes the forward keeps for backward, the step's peak, and the median SGD step
time, variants interleaved in this process.
Run: python benchmarks/bench_revnet.py [--batch 32] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from branchgraph.memory import compare_variants, table
from branchgraph.models import create_model
from results import invocation, variant_rows, write  # benchmarks/, the script's folder, is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--units", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--json")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    report, table_rows = {}, []
    for units in args.units:
        torch.manual_seed(0)
        variants = {
            f"revnet u={units}": create_model("revnet38", units=units),
            f"revnet-stored u={units}": create_model("revnet38", units=units, reversible=False),
            f"resnet u={2 * units}": create_model("resnet32", units=2 * units),
        }
        results = compare_variants(variants, x, y, rounds=args.rounds)
        print(f"\nunits per stage {units}, batch {args.batch}, 32x32, {torch.get_num_threads()} threads", flush=True)
        print(table(results), flush=True)
        report[units] = [r.to_dict(results[0]) for r in results]
        header, rows = variant_rows(results)
        table_rows += rows
    first, last = report[args.units[0]][0], report[args.units[-1]][0]
    print(f"\nrevnet kept bytes, {args.units[-1]} vs {args.units[0]} units per stage: "
          f"{last['forward_mib'] / first['forward_mib']:.3f}x; peak {last['peak_mib'] / first['peak_mib']:.3f}x")
    if args.results:
        write("revnet", f"RevNet-38 against its stored-activation twin and a ResNet of as many convs, batch "
              f"{args.batch}, 32x32 (ratios against the RevNet of the same depth)", invocation(), header, table_rows,
              report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
