"""What every inference engine is served through: ``Serving``, the module a user calls whichever engine won (fp32
NCHW in, fp32 out), ``Built`` (a module ready to time), and the ONNX export ONNX Runtime and OpenVINO run."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def _first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class Serving(nn.Module):
    """``net`` behind the interface of the original model's inference: an fp32 input in any layout, converted to
    the candidate's layout; the forward under autocast when the candidate asks for it; weights cast to a reduced
    precision get inputs of that precision; the main output back in fp32."""

    def __init__(self, net: nn.Module, channels_last: bool = False, autocast: torch.dtype | None = None,
                 weights: torch.dtype | None = None) -> None:
        super().__init__()
        self.net, self.channels_last, self.autocast, self.weights = net, channels_last, autocast, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.weights is not None:
            x = x.to(self.weights)
        context = torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with context:
            out = _first(self.net(x))
        return out.float()


@dataclass
class Built:
    """A candidate ready to time: the module, the input it takes, and seconds spent compiling it (0 if none)."""

    net: nn.Module
    x: torch.Tensor
    compile_s: float = 0.0


def export_for_runtimes(model: nn.Module, example: torch.Tensor, directory: Path) -> Path:
    """``model`` (fp32, eval) as ``directory/model.onnx`` with a dynamic batch, checked by ONNX's checker."""
    from branchgraph.passes.export import export_onnx

    return export_onnx(copy.deepcopy(model).float().eval(), example[:1].float(), directory / "model.onnx")
