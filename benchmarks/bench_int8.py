"""int8 inference against fp32 and bf16: ``branchgraph bench --peers`` with calibration data (eager fp32, ONNX
Runtime, OpenVINO fp32/bf16/int8, interleaved), and what ``optimize --tune`` deploys for a trained run with the
accuracy its record states.

For a trained run (``--run RUN_DIR``, e.g. the demo's): speed at batch 128 and 1, top-1 of eager fp32 and of int8 on
the validation split, the tuner's choice and the deployed model's test top-1 against fp32's. For googlenet-d2l
(random weights, speed only): calibrated on Fashion-MNIST resized to 96x96.

    python benchmarks/bench_int8.py --run RUN_DIR [--rounds 5] [--compile] [--results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import branchgraph as bg
from results import invocation, write  # benchmarks/, the script's folder, is on sys.path


def _rows(label: str, batch: int, result: dict) -> list[list[str]]:
    """One row per variant: median, speed-up over eager, against OpenVINO fp32, precision, held-out top-1."""
    ov = result["variants"].get("openvino fp32", {}).get("median_ms")
    return [[label, str(batch), v, f"{r['median_ms']:.2f}", f"{r['speedup_vs_eager']:.2f}x",
             f"{ov / r['median_ms']:.2f}x" if ov else "-", r["precision"],
             "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}", f"{r['fraction_of_peak']:.0%}"]
            for v, r in result["variants"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run directory (e.g. from 'make demo')")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="at batch 128, add the torch.compile variants and "
                        "torch's own int8 (PT2E, compiled): minutes of compilation per model")
    parser.add_argument("--results", action="store_true", help="also write the table into docs/results/")
    args = parser.parse_args()
    rows, data = [], {}
    cases = [(args.run, "trained run", {}), ("googlenet-d2l", "googlenet-d2l (random weights)",
                                            {"calibration": "fashion-mnist"})]
    for model, label, options in cases:
        for batch in (128, 1):
            rounds = args.rounds if batch > 1 else 20 * args.rounds
            result = bg.bench(model, "eval", batch, rounds=rounds, compile=args.compile and batch > 1, peers=True,
                              **options).to_dict()
            data[f"{label} b{batch}"] = result
            rows += _rows(label, batch, result)
            print(json.dumps({"model": label, "batch": batch, "variants": {
                v: round(r["median_ms"], 2) for v, r in result["variants"].items()}}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, report = bg.optimize(args.run, mode="eval", tune=True, out=Path(tmp) / "served", retune=True,
                                compile_budget=None if args.compile else 0)
        record = json.loads(report.deployed.read_text())
    accuracy = record.get("accuracy")
    data["deployed"] = {"chosen": record["candidate"], "accuracy": accuracy, "tuning": record["tuning"]}
    rows.append(["trained run", "128", f"optimize --tune deployed {record['candidate']}", "", "", "", "",
                 "" if accuracy is None else f"test {accuracy['chosen']:.4f} (fp32 {accuracy['reference']:.4f})", ""])
    print(json.dumps(data["deployed"]["accuracy"]), record["candidate"], flush=True)
    if args.results:
        write("int8", "int8 inference: OpenVINO int8 (NNCF) beside fp32 and bf16, with held-out accuracy",
              invocation(), ["model", "batch", "variant", "median ms", "vs eager", "vs openvino fp32", "precision",
                             "top-1 (validation)", "of matmul peak"], rows, data)


if __name__ == "__main__":
    main()
