"""Where inference time goes in each engine: per operator category (convolution, pooling, concatenation, layout
and precision conversions, the rest), from torch's profiler for eager and compiled torch and from OpenVINO's own
per-node counters, on the same model, batch and threads.

    python benchmarks/profile_engines.py [--model googlenet-d2l] [--batch 128] [--iters 3] [--results]
"""

from __future__ import annotations

import argparse
import collections
import copy

import torch
from torch.profiler import ProfilerActivity, profile

import branchgraph as bg
from branchgraph.hardware import native_bf16
from branchgraph.inference import runtimes
from branchgraph.inference.engines import export_for_runtimes
from branchgraph.models import model_info
from branchgraph.tune import Candidate, build_candidate
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path

CATEGORIES = ("convolution", "pooling", "concatenation", "conversion", "matmul", "other")
# Substrings of torch operator / Inductor kernel names and of OpenVINO node types, per category.
PATTERNS = {
    "convolution": ("conv", "Convolution"),
    "pooling": ("pool", "Pooling"),
    "concatenation": ("cat", "Concat"),
    "conversion": ("_to_copy", "aten::to", "copy_", "contiguous", "clone", "Reorder", "Convert"),
    "matmul": ("addmm", "linear", "mm", "FullyConnected", "MatMul"),
}


def category(name: str) -> str:
    """The category of an operator, kernel or OpenVINO node type by its name."""
    return next((c for c, keys in PATTERNS.items() if any(k in name for k in keys)), "other")


def torch_profile(net: torch.nn.Module, x: torch.Tensor, iters: int, autocast: torch.dtype | None) -> dict[str, float]:
    """Milliseconds per call per category: self CPU time of the operators torch's profiler saw."""
    context = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), context:
        net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                net(x)
    ms: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        ms[category(event.key)] += event.self_cpu_time_total / 1000 / iters
    return ms


def openvino_profile(onnx_path: str, precision: str, x: torch.Tensor, iters: int) -> dict[str, float]:
    """Milliseconds per call per category from OpenVINO's per-node counters (PERF_COUNT)."""
    import openvino as ov

    module = runtimes.OpenVinoModule(onnx_path, precision)
    compiled = ov.Core().compile_model(module.model, "CPU", {**module.config(), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    ms: dict[str, float] = collections.defaultdict(float)
    request.infer({0: x.numpy()})
    for _ in range(iters):
        request.infer({0: x.numpy()})
        for node in request.profiling_info:
            ms[category(node.node_type)] += node.real_time.total_seconds() * 1000 / iters
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet-d2l")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = bg.create_model(args.model).eval()
    x = torch.randn(args.batch, *model_info(args.model).input_size)
    reduced = "bf16" if native_bf16("cpu") else "fp32"
    weights = reduced != "fp32"
    variants = {f"eager {c.name}": c for c in (Candidate(), Candidate(reduced, True, weights=weights))}
    variants[f"compiled {Candidate(reduced, True, weights=weights).name}"] = Candidate(
        reduced, True, weights=weights, engine="compiled")
    rows, data = [], {}
    for label, cand in variants.items():
        built = build_candidate(copy.deepcopy(model), x, "eval", cand)
        data[label] = torch_profile(built.net, built.x, args.iters, cand.autocast)
    if runtimes.available("openvino"):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = str(export_for_runtimes(model, x, Path(tmp)))
            for precision in dict.fromkeys(("fp32", reduced)):
                data[f"openvino {precision}"] = openvino_profile(path, precision, x, args.iters)
    for label, ms in data.items():
        total = sum(ms.values())
        rows.append([label, f"{total:.1f}", *(f"{ms.get(c, 0.0):.1f} ({ms.get(c, 0.0) / total:.0%})"
                                                for c in CATEGORIES)])
        print(" | ".join(rows[-1]), flush=True)
    if args.results:
        write("profile-engines", f"Where {args.model} inference time goes per engine, batch {args.batch}",
              invocation(), ["engine", "ms per call (profiled)", *CATEGORIES], rows, data)


if __name__ == "__main__":
    main()
