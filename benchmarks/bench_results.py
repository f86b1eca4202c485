"""The headline speed benchmarks, written as data and pages under ``docs/results/``: inference and a training step
of ``googlenet-d2l`` (eager, torch.compile, the optimised graph, both, and the tuned choice), interleaved rounds in
one process, medians and ratios against eager. ``make bench`` runs it; ``--quick`` is a short check of the
pipeline (batch 8, 2 rounds, no torch.compile) that writes into a temporary folder, not ``docs/results/``."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import branchgraph as bg
from results import RESULTS, write


def rows(result: dict) -> list[list[str]]:
    """One table row per variant: median ms, speed-up over eager, precision, GFLOP/s and share of the peak."""
    return [[name, f"{v['median_ms']:.1f}", f"{v['speedup_vs_eager']:.2f}x", v["precision"], f"{v['gflops']:.1f}",
             f"{v['fraction_of_peak']:.0%}"] for name, v in result["variants"].items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 rounds, no torch.compile: checks the pipeline")
    args = parser.parse_args()
    batch, rounds = (8, 2) if args.quick else (128, 10)
    directory = Path(tempfile.mkdtemp(prefix="branchgraph-results-")) if args.quick else RESULTS
    header = ["variant", "median ms", "vs eager", "precision", "GFLOP/s", "of matmul peak"]
    for mode, tune in (("eval", True), ("train", False)):
        result = bg.bench("googlenet-d2l", mode, batch, rounds=rounds, compile=not args.quick, tune=tune).to_dict()
        command = (f"python benchmarks/bench_results.py{' --quick' if args.quick else ''} "
                   f"(branchgraph bench googlenet-d2l --mode {mode} --batch {batch} --rounds {rounds}"
                   f"{' --tune' if tune else ''})")
        title = f"googlenet-d2l {'inference' if mode == 'eval' else 'training step'}, batch {batch}, 96x96"
        page = write(f"bench-{mode}", title, command, header, rows(result), result, directory)
        print(f"{title}: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
