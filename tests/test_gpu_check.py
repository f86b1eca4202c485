"""``make test-gpu``'s script, checked on the CPU so that device time goes to running it: without CUDA it says so
in one line and exits 0; a failing step is recorded with its error's first line while the others run; the page
names the GPU, its driver and CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import gpu_check
    import results
finally:
    sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--results"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.strip() == "test-gpu: no CUDA device here, nothing to run"
    assert not list((REPO / "docs" / "results").glob("gpu-*"))


def test_a_failing_step_is_recorded_and_the_others_still_run() -> None:
    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    rows, data = gpu_check.run_steps({"first": broken, "second": lambda: {"ok": True, "summary": "1.20x"}})
    assert [row[:3] for row in rows] == [["first", "FAILED", "RuntimeError: CUDA error: an illegal memory access"],
                                         ["second", "ok", "1.20x"]]
    assert not data["first"]["ok"] and data["second"]["seconds"] >= 0


def test_the_page_names_the_gpu_its_driver_and_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "gpu", lambda: {"gpu": "NVIDIA H100 80GB HBM3", "driver": "560.35", "cuda": "12.6"})
    page = results.write("gpu", "The CUDA path on a GPU", "make test-gpu", ["check", "result"], [["a", "ok"]], {},
                         tmp_path)
    assert "GPU: NVIDIA H100 80GB HBM3, driver 560.35, CUDA 12.6." in page.read_text()
    assert set(gpu_check.STEPS) >= {"GPU tests", "passes verified on CUDA", "parallel pass on streams",
                                    "checkpoint plan, CUDA peak", "fast preset, one epoch", "torch.compile vs eager"}
