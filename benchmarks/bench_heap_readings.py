"""What the heap readings of a measured step cost once the heap is fragmented (a long-lived process).

glibc's ``mallinfo2`` walks its free lists, so one reading costs about 1 us in a fresh process and milliseconds
after many small blocks were freed among live ones. This leaves ``--live`` small tensors among freed ones, then
counts the readings of one ``summary`` and times it, beside the same in a fresh heap (run it once per code version
to compare them).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from branchgraph.api import summary
from branchgraph.graph import record
from branchgraph.hardware import describe_text


def _fragment(live: int, seed: int = 0) -> list[torch.Tensor]:
    """Allocate four times ``live`` small tensors, keeping a random ``live`` of them, then free two thirds."""
    rng = random.Random(seed)
    kept: list[torch.Tensor] = []
    for _ in range(4 * live):
        kept.append(torch.empty(rng.randint(1, 4000)))
        if len(kept) > live:
            kept.pop(rng.randrange(len(kept)))
    return kept[::3]


def _measure(model: str) -> dict[str, float]:
    """Readings of one summary of ``model``, its time, and one reading's time."""
    readings = [0]
    real = record.heap_in_use

    def counted() -> int | None:
        readings[0] += 1
        return real()

    start = time.perf_counter()
    for _ in range(20):
        real()
    reading = (time.perf_counter() - start) / 20
    record.heap_in_use = counted
    try:
        start = time.perf_counter()
        summary(model)
        seconds = time.perf_counter() - start
    finally:
        record.heap_in_use = real
    return {"readings": readings[0], "summary_s": round(seconds, 2), "reading_ms": round(reading * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l-bn")
    parser.add_argument("--live", type=int, default=50_000, help="small tensors left alive among freed ones")
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary("googlenet-fmnist")  # warm-up: first calls of operators
    fresh = _measure(args.model)
    kept = _fragment(args.live)
    fragmented = _measure(args.model)
    print(json.dumps({"machine": describe_text(), "model": args.model, "fresh": fresh,
                      "fragmented": fragmented, "live_small_tensors": len(kept)}))


if __name__ == "__main__":
    main()
