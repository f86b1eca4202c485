"""Training steps with glibc's own heap policy against ``--heap keep`` (branchgraph.heap), one child process per
policy and round, the two policies alternating (a heap policy is process-wide, so the variants cannot share one
process): median step time, page faults per step and resident peak, and the median of per-round ratios.

    python benchmarks/bench_heap.py [--rounds 5] [--steps 6] [--beside] [--json out.json]

``--beside`` runs a one-thread matrix-multiply loop in another process throughout, as on a shared machine.

Cases: ``googlenet-d2l`` batch 128 at 96² in fp32 NCHW, and the ``accurate`` preset's network (``googlenet-fmnist``
width 0.5) at batch 128, 28², under bf16 autocast in channels_last, which ``--precision auto`` picks where bf16 is
native.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from branchgraph.hardware import describe_text
from branchgraph.heap import apply_heap_policy
from branchgraph.models import create_model
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path

CASES = {
    "googlenet-d2l fp32": ("googlenet-d2l", {}, 96, False),
    "accurate preset's net bf16 channels_last": ("googlenet-fmnist", {"width": 0.5}, 28, True),
}

BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a"


def child(case: str, policy: str, steps: int) -> dict[str, float]:
    """Time ``steps`` SGD steps (after two warm-up steps) under ``policy``."""
    if apply_heap_policy(policy) != (policy == "keep"):
        raise SystemExit(f"bench_heap: the {policy!r} policy cannot be set here (glibc's mallopt is missing)")
    name, kwargs, size, bf16 = CASES[case]
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    x, y = torch.randn(128, 1, size, size), torch.randint(0, 10, (128,))
    if bf16:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times, faults = [], []
    for step in range(steps + 2):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"median_s": statistics.median(times), "faults_per_step": statistics.median(faults),
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_rounds(rounds: int, steps: int) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Each case under each policy once per round, the policies' order alternating between rounds."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {c: {"system": [], "keep": []} for c in CASES}
    for r in range(rounds):
        for case in CASES:
            for policy in ("system", "keep") if r % 2 == 0 else ("keep", "system"):
                out = subprocess.run([sys.executable, __file__, "--steps", str(steps), "--child", case, policy],
                                     check=True, capture_output=True, text=True).stdout
                results[case][policy].append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--beside", action="store_true", help="a one-thread matmul loop running alongside")
    parser.add_argument("--json")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps)))
        return
    print(describe_text() + (", a one-thread matmul loop beside" if args.beside else ""))
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if args.beside else None
    try:
        results = run_rounds(args.rounds, args.steps)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    summary = {}
    for case, runs in results.items():
        ratios = [k["median_s"] / s["median_s"] for s, k in zip(runs["system"], runs["keep"], strict=True)]
        summary[case] = {p: {key: statistics.median(run[key] for run in runs[p]) for key in runs[p][0]}
                         for p in runs} | {"keep_over_system": statistics.median(ratios),
                                           "ratio_range": [min(ratios), max(ratios)]}
        row = summary[case]
        print(f"{case}: system {row['system']['median_s'] * 1000:.0f} ms, {row['system']['faults_per_step']:.0f} "
              f"faults/step, {row['system']['max_rss_mib']:.0f} MiB resident; keep {row['keep']['median_s'] * 1000:.0f}"
              f" ms, {row['keep']['faults_per_step']:.0f} faults/step, {row['keep']['max_rss_mib']:.0f} MiB; keep / "
              f"system {row['keep_over_system']:.3f}x (rounds {min(ratios):.3f}-{max(ratios):.3f})")
    if args.results:
        rows = [[case, *(f"{row[p]['median_s'] * 1e3:.0f} ms, {row[p]['faults_per_step']:.0f} faults/step, "
                         f"{row[p]['max_rss_mib']:.0f} MiB" for p in ("system", "keep")),
                 f"{row['keep_over_system']:.3f}x ({row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f})"]
                for case, row in summary.items()]
        write("heap" + ("-shared" if args.beside else ""), "Training steps under glibc's heap policy and --heap keep"
              + (", beside a one-thread matmul loop" if args.beside else ""), invocation(),
              ["case", "system (median step, page faults, resident)", "keep", "keep / system (range)"], rows,
              {"rounds": args.rounds, "cases": summary})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe_text(), "rounds": args.rounds, "beside": args.beside, "cases": summary}, f,
                      indent=2)


if __name__ == "__main__":
    main()
