"""Inference engines side by side: ``branchgraph bench --peers --tune`` (eager fp32, torch.compile plain and with
freezing, the tuned choice, ONNX Runtime and OpenVINO, each with its output error) for each model at batch 1
(latency) and batch 128 (throughput), interleaved rounds in one process per model and batch; medians, ratios to
eager, and the tuned choice's throughput against the fastest engine's.

    python benchmarks/bench_engines.py [--models googlenet-d2l googlenet inception-v3-like] [--batches 1 128]
        [--rounds 5] [--large-batch N] [--results]
"""

from __future__ import annotations

import argparse
import json

from torch import nn

import branchgraph as bg
from results import TEST_NETS, invocation, write  # benchmarks/, the script's folder, is on sys.path

MODELS: dict[str, tuple[str | nn.Module, tuple[int, int, int]]] = {
    "googlenet-d2l": ("googlenet-d2l", (1, 96, 96)),
    "googlenet": ("googlenet", (3, 224, 224)),
}


def model_for(name: str) -> tuple[str | nn.Module, tuple[int, int, int]]:
    """The registry name (or, for the Inception-v3-shaped test net, the module) and its input size."""
    if name == "inception-v3-like":
        return bg.create_model(f"{TEST_NETS}:InceptionV3Like", in_chans=3), (3, 299, 299)
    return MODELS.get(name, (name, None))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["googlenet-d2l", "googlenet", "inception-v3-like"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--large-batch", type=int, default=None, metavar="N",
                        help="use N instead of the largest of --batches for inception-v3-like (299x299: a batch of 128 "
                             "takes over an hour of this benchmark on 2 cores)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    rows, data = [], {}
    for name in args.models:
        batches = args.batches
        if name == "inception-v3-like" and args.large_batch:
            batches = [b for b in batches if b != max(batches)] + [args.large_batch]
        for batch in batches:
            model, size = model_for(name)
            result = bg.bench(model, "eval", batch, size, rounds=args.rounds if batch > 1 else 20 * args.rounds,
                              peers=True, tune=True, retune=True).to_dict()
            fastest = min(result["variants"], key=lambda v: result["variants"][v]["median_ms"])
            tuned = result["variants"]["tuned"]["median_ms"]
            share = result["variants"][fastest]["median_ms"] / tuned
            data[f"{name} b{batch}"] = result
            for variant, r in result["variants"].items():
                error = "-" if r["output_error"] is None else f"{r['output_error']:.1e}"
                rows.append([name, str(batch), variant + (" (fastest)" if variant == fastest else ""),
                             f"{r['median_ms']:.2f}", f"{r['speedup_vs_eager']:.2f}x", r["precision"], error,
                             f"{r['gflops']:.0f}", f"{r['fraction_of_peak']:.0%}"])
            rows.append([name, str(batch), f"tuned chose {result['tuning']['chosen']['name']}",
                         f"{tuned:.2f}", f"{share:.2f}x the fastest", "", "", "", ""])
            print(json.dumps({"model": name, "batch": batch, "tuned_vs_fastest": share, "fastest": fastest,
                              "chosen": result["tuning"]["chosen"]["name"]}), flush=True)
            if args.results:  # after every model and batch, so a long run keeps what it measured
                write("engines", "Inference engines: eager, compiled, tuned, ONNX Runtime and OpenVINO",
                      invocation(), ["model", "batch", "variant", "median ms", "vs eager", "precision",
                                     "error (max abs / max)", "GFLOP/s", "of matmul peak"], rows, data)


if __name__ == "__main__":
    main()
