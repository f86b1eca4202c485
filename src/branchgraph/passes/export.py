"""Export an optimised eval-mode model to ONNX and check the file with ONNX's own checker."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from branchgraph.errors import BranchgraphError


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` (in eval mode) as ONNX with input ``images`` and output ``logits`` (batch dynamic)."""
    import onnx

    path = Path(path)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as exc:  # surfaced as one line naming the file
            raise BranchgraphError(f"ONNX export to {path} failed: {str(exc).strip().splitlines()[0]}") from None
    onnx.checker.check_model(onnx.load(str(path)))
    return path
