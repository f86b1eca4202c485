"""Training-step throughput by precision and memory layout, variants interleaved in one process.

    python benchmarks/bench_train.py [--model googlenet-fmnist] [--batch 128] [--rounds 15] [--json]

Each round times one optimiser step of every variant in turn, so machine noise hits all of them alike;
the table gives the median step time and its ratio to fp32 NCHW.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import branchgraph as bg
from branchgraph.models import model_info

VARIANTS = {
    "fp32 NCHW": (False, False),
    "fp32 channels_last": (False, True),
    "bf16 autocast NCHW": (True, False),
    "bf16 autocast channels_last": (True, True),
}


def make_step(name: str, batch: int, bf16: bool, channels_last: bool, seed: int = 0) -> Callable[[], float]:
    """A closure running one SGD step of a fresh model in the given precision and layout."""
    torch.manual_seed(seed)
    model = bg.create_model(name).train()
    x = torch.randn(batch, *model_info(name).input_size)
    y = torch.randint(0, model_info(name).num_classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-fmnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = {v: make_step(args.model, args.batch, *flags) for v, flags in VARIANTS.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            times[variant].append(step())
    base = statistics.median(times["fp32 NCHW"])
    rows = [
        {"variant": v, "median_ms": 1000 * statistics.median(t), "images_per_s": args.batch / statistics.median(t),
         "speedup_vs_fp32_nchw": base / statistics.median(t)}
        for v, t in times.items()
    ]
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "processor": platform.processor() or platform.machine()}
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, "rounds": args.rounds, "machine": machine,
                          "results": rows}, indent=2))
        return
    print(f"{args.model}, batch {args.batch}, {args.rounds} interleaved rounds, torch {machine['torch']}, "
          f"{machine['threads']} threads, CPU capability {machine['cpu_capability']}")
    print(f"{'variant':<30} {'median ms':>10} {'img/s':>8} {'vs fp32 NCHW':>13}")
    for r in rows:
        speedup = r["speedup_vs_fp32_nchw"]
        print(f"{r['variant']:<30} {r['median_ms']:>10.1f} {r['images_per_s']:>8.0f} {speedup:>12.2f}x")


if __name__ == "__main__":
    main()
