"""torch's own int8: PT2E post-training quantisation with torchao's X86 Inductor quantizer (the exported graph gets
observers, is calibrated on images and converted to quantize/dequantize pairs), compiled by Inductor with freezing,
whose x86 passes lower the pairs around convolutions and linear layers to oneDNN int8 kernels."""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

from branchgraph.inference.runtimes import INSTALL

CALIBRATION_BATCH = 32


def pt2e_available() -> str | None:
    """Why PT2E int8 cannot run here (torchao missing), or None."""
    return None if importlib.util.find_spec("torchao") else f"torchao not installed: {INSTALL}"


def register_int8_ops() -> None:
    """Import what a PT2E int8 graph needs to load and compile: the quantize/dequantize operators and torchao's
    x86 Inductor lowering passes (without torchao's notes about its CUDA kernels on a CPU-only torch)."""
    import logging

    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.inductor_passes.x86
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def quantize_pt2e(model: nn.Module, example: torch.Tensor, images: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` exported (dynamic batch) and quantised to int8 by torchao's X86 Inductor quantizer (its default
    static, per-channel weight configuration), calibrated on ``images`` in batches."""
    register_int8_ops()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    batch = torch.export.Dim("batch")
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for start in range(0, len(images), CALIBRATION_BATCH):
            prepared(images[start:start + CALIBRATION_BATCH].float())
    return convert_pt2e(prepared)


class FrozenCompiled(nn.Module):
    """``net`` compiled by Inductor, every compilation with freezing on (torchao's int8 lowering reads freezing
    from Inductor's global settings, not from a compile's options), one static compilation per batch size (the
    int8 convolution lowering fails on a dynamic batch with this torch)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(net, dynamic=False)

    @property
    def _orig_mod(self) -> nn.Module:
        """The module before compilation (what a deployment exports), as ``torch.compile``'s wrapper names it."""
        return self.compiled._orig_mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor

        with inductor.patch(freezing=True):
            return self.compiled(x)
