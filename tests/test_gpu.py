"""CUDA training paths (autocast with a grad scaler for fp16, bf16); skipped cleanly without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from branchgraph.train import build_config, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_training_runs_and_learns(tmp_path: Path, data_dir: Path, precision: str) -> None:
    config = build_config("fast", overrides={
        "device": "cuda", "precision": precision, "limit": 2048, "epochs": 2, "batch_size": 128,
        "out_dir": str(tmp_path),
    })
    result = train(config, progress=False)
    assert result.final["test_acc"] > 0.5, result.final
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    # The grad scaler is on exactly for fp16, and its scale is saved for resuming.
    assert bool(state["scaler"]) == (precision == "fp16")
