"""CUDA training paths (autocast with a grad scaler for fp16, bf16); skipped cleanly without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import branchgraph as bg
from branchgraph.graph import capture
from branchgraph.passes import ParallelBranches, original_parameters, parallel, parallel_runtime
from branchgraph.training import build_config, train

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


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_parallel_branches_on_cuda_streams_match_sequential(mode: str) -> None:
    """The parallel pass on CUDA: branches on side streams give the sequential outputs and gradients (fp32, cuDNN
    picks the same kernels per branch, so within 1e-5 relative), and the side streams were used."""
    torch.manual_seed(0)
    model = bg.create_model("googlenet-d2l").cuda().train(mode == "train")
    x = torch.randn(8, 1, 96, 96, device="cuda")
    gm = capture(model, x).graph_module
    fast = parallel(gm).train(mode == "train")
    assert sum(isinstance(m, ParallelBranches) for m in fast.modules()) == 9
    with torch.set_grad_enabled(mode == "train"):
        want, got = gm(x), fast(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(parallel_runtime._STREAMS) == 3  # the side streams live in the runtime's registry
    if mode == "train":
        weights = torch.randn_like(want)
        names = sorted(original_parameters(gm))
        grads = []
        for out, net in ((want, gm), (got, fast)):
            params = original_parameters(net)
            grads.append(torch.autograd.grad((out * weights).sum(), [params[n] for n in names]))
        for name, w, g in zip(names, *grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=name)
