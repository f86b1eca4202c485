"""The CUDA path on a GPU, in one run (``make test-gpu``): the GPU tests; every default pass verified on CUDA in
training and inference for the registry's Inception nets, and fp16/bf16 autocast against fp32; the parallel pass on
CUDA streams against sequential (interleaved); a checkpoint plan's predicted against measured CUDA peak; the
``fast`` preset for one epoch with AMP; eager against torch.compile. Each step's figures (or its error's first
line) go into a results page headed by the GPU, its driver, CUDA and torch. Without CUDA: one line, exit 0.

    python benchmarks/gpu_check.py [--results]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from results import write  # benchmarks/, the script's folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]
INCEPTION_NETS = ("googlenet-d2l", "googlenet-d2l-bn", "googlenet-fmnist", "googlenet", "googlenet-bn")
REDUCED_TOLERANCE = {"fp16": 0.1, "bf16": 0.1}  # autocast outputs against fp32, normwise (docs: tuning)
DEVICE = "cuda"  # --device cpu: a dry run of every step on the CPU, to check the script before device time


def gpu_tests() -> dict[str, Any]:
    """tests/test_gpu.py on this GPU."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:randomly", "tests/test_gpu.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"ok": done.returncode == 0, "summary": last}


def passes_on_cuda() -> dict[str, Any]:
    """Each Inception net's default passes verified on CUDA (train and eval), and autocast against fp32."""
    import branchgraph as bg
    from branchgraph.passes import output_error
    from branchgraph.passes.pipeline import optimize

    found: dict[str, Any] = {}
    for name in INCEPTION_NETS:
        size = bg.models.model_info(name).input_size
        for mode in ("train", "eval"):
            torch.manual_seed(0)
            model = bg.create_model(name).to(DEVICE).train(mode == "train")
            x = torch.randn(4, *size, device=DEVICE)
            _, report = optimize(model, x, mode=mode)
            found[f"{name} {mode}"] = {"ok": bool(report.ok), "passes": [p.name for p in report.passes]}
        model = bg.create_model(name).to(DEVICE).eval()
        x = torch.randn(8, *size, device=DEVICE)
        with torch.no_grad():
            reference = model(x)
            for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                with torch.autocast(DEVICE, dtype=dtype):
                    error = output_error(model(x).float(), reference)
                found[f"{name} {precision}"] = {"ok": error <= REDUCED_TOLERANCE[precision], "error": error}
    return {"ok": all(v["ok"] for v in found.values()), "summary": f"{sum(v['ok'] for v in found.values())} of "
            f"{len(found)} checks hold", "checks": found}


def parallel_streams() -> dict[str, Any]:
    """The parallel pass on CUDA streams against sequential, interleaved, at batch 1 and 32."""
    import branchgraph as bg

    result = bg.bench_parallel("googlenet-d2l", "eval", (1, 32), rounds=20, device=DEVICE).to_dict()
    speed = {b: round(r["speedup"], 2) for b, r in result["batches"].items()}
    return {"ok": True, "summary": "speed-up by batch " + ", ".join(f"{b}: {s}x" for b, s in speed.items()),
            "result": result}


def memory_plan() -> dict[str, Any]:
    """A 25 % kept-bytes plan on CUDA: its predicted peak against the measured torch.cuda.max_memory_allocated."""
    import branchgraph as bg
    from branchgraph.memory.checkpointing import plan

    model = bg.create_model("googlenet-d2l").to(DEVICE).train()
    x = torch.randn(64, 1, 96, 96, device=DEVICE)
    planned, p = plan(model, x, 0.25, measure=False)
    peaks = {}
    for label, net in (("plain", model), ("planned", planned)):
        cuda = DEVICE == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        net(x).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        peaks[label] = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return {"ok": True, "summary": f"peak MiB plain {peaks['plain']:.0f}, planned {peaks['planned']:.0f} "
            f"(predicted {p.predicted_peak_bytes / 2**20:.0f})", "peaks_mib": peaks, "plan": p.to_dict()}


def train_fast_epoch() -> dict[str, Any]:
    """The fast preset for one epoch on CUDA with precision chosen by timing (AMP where it wins)."""
    import tempfile

    import branchgraph as bg

    with tempfile.TemporaryDirectory() as out:
        small = {"limit": 512} if DEVICE == "cpu" else {}
        result = bg.train(epochs=1, device=DEVICE, out_dir=out, progress=False, **small)
    final, floor = result.final, 0.8 if DEVICE == "cuda" else 0.0  # a full epoch; the dry run only has to run
    return {"ok": final.get("test_acc", 0) > floor, "summary": f"test top-1 {final.get('test_acc', 0):.4f} in "
            f"{final.get('time_s', 0):.0f} s ({result.config.precision})", "final": final}


def compiled_against_eager() -> dict[str, Any]:
    """googlenet-d2l inference at batch 128: eager against torch.compile, interleaved."""
    import branchgraph as bg
    from branchgraph.timing import make_runner, time_interleaved

    model = bg.create_model("googlenet-d2l").to(DEVICE).eval()
    x = torch.randn(128, 1, 96, 96, device=DEVICE)
    y = torch.zeros(128, dtype=torch.long, device=DEVICE)
    nets = {"eager": model, "compiled": torch.compile(model)}
    medians = time_interleaved({k: make_runner(n, x, y, "eval") for k, n in nets.items()}, 20, 3)
    ratio = medians["eager"] / medians["compiled"]
    return {"ok": True, "summary": f"eager {medians['eager'] * 1e3:.2f} ms, compiled {medians['compiled'] * 1e3:.2f}"
            f" ms ({ratio:.2f}x)", "median_s": medians}


STEPS: dict[str, Callable[[], dict[str, Any]]] = {
    "GPU tests": gpu_tests, "passes verified on CUDA": passes_on_cuda, "parallel pass on streams": parallel_streams,
    "checkpoint plan, CUDA peak": memory_plan, "fast preset, one epoch": train_fast_epoch,
    "torch.compile vs eager": compiled_against_eager,
}


def run_steps(steps: dict[str, Callable[[], dict[str, Any]]]) -> tuple[list[list[str]], dict[str, Any]]:
    """Every step, timed; a failing step is recorded with its error's first line and the others still run."""
    rows, data = [], {}
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            found = step()
        except Exception as exc:  # recorded on the page: one failing check must not hide the others
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            found = {"ok": False, "summary": f"{type(exc).__name__}: {first}"}
        found["seconds"] = time.perf_counter() - start
        data[name] = found
        rows.append([name, "ok" if found["ok"] else "FAILED", found["summary"], f"{found['seconds']:.0f}"])
        print(f"{name}: {rows[-1][1]}: {found['summary']}", flush=True)
    return rows, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", action="store_true", help="also write the page into docs/results/")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of every step on the CPU (small, no page), to check the script before "
                        "device time")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":
        rows, data = run_steps({k: v for k, v in STEPS.items() if k != "GPU tests"})
        return 0 if all(d["ok"] for d in data.values()) else 1
    if not torch.cuda.is_available():
        print("test-gpu: no CUDA device here, nothing to run")
        return 0
    rows, data = run_steps(STEPS)
    if args.results:
        write("gpu", "The CUDA path on a GPU", "make test-gpu", ["check", "result", "figures", "seconds"], rows, data)
    return 0 if all(d["ok"] for d in data.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
