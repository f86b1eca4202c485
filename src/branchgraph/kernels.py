"""Kernel defects of the libraries torch bundles, and the layouts that steer training around them.

oneDNN's x86 1x1 convolution, computing the weight gradient of a *strided* 1x1 convolution over a channels_last
(NHWC) input with fewer input channels (per group) than its channel block (8 on AVX2, 16 on AVX-512), offsets its
per-thread workspace by the block instead of the channel count (uxlfoundation/oneDNN#6035, open at torch 2.13's
oneDNN): with more than one thread it writes past the workspace, so the weight gradient is wrong and the process
can abort ("double free or corruption"), segfault or hang. RepVGG, MobileOne, GENet and FastViT stems have such a
convolution (3 input channels, stride 2). The NCHW kernel is correct, so those convolutions train in NCHW.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The largest channel block among oneDNN's f32 1x1 kernels (AVX-512): fewer input channels per group than this
# can hit the defect on some processor, so the guard does not depend on the one it runs on.
CHANNEL_BLOCK = 16
REASON = (f"kept NCHW, as a strided 1x1 conv over fewer than {CHANNEL_BLOCK} input channels per group gets wrong "
          "weight gradients, or crashes the process, in channels_last on CPUs (a oneDNN defect)")


def strided_pointwise(weight_shape: torch.Size | tuple[int, ...], stride: Any) -> bool:
    """Whether a 2-D convolution of this weight shape (out, in per group, kh, kw) and stride is a strided 1x1
    convolution with fewer than ``CHANNEL_BLOCK`` input channels per group: one whose channels_last weight
    gradient oneDNN miscomputes."""
    if len(weight_shape) != 4 or tuple(weight_shape[2:]) != (1, 1):
        return False
    strides = tuple(stride) if isinstance(stride, tuple | list) else (stride, stride)
    return any(s > 1 for s in strides) and weight_shape[1] < CHANNEL_BLOCK


def unsafe_convolutions(module: nn.Module) -> list[str]:
    """The module paths of the ``nn.Conv2d`` layers in ``module`` that must not train in channels_last."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and strided_pointwise(m.weight.shape, m.stride)]


def nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major (NCHW) strides, copied only when its strides differ: a 1x1 kernel's or map's
    channels_last strides pass ``is_contiguous()``, yet make the convolution pick its NHWC kernel."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


def _nchw_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: the input in NCHW when it will be differentiated on a CPU (the defective kernel's case)."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu" and torch.is_grad_enabled():
        return (nchw(x), *args[1:])
    return None


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module.to(memory_format=torch.channels_last)`` (in place, returned), except the convolutions whose
    channels_last weight gradient oneDNN miscomputes: their weights stay NCHW and their input is made NCHW
    when it will be differentiated on a CPU."""
    module.to(memory_format=torch.channels_last)
    for name in unsafe_convolutions(module):
        conv = module.get_submodule(name)
        conv.weight.data = nchw(conv.weight.data)
        if not any(hook is _nchw_input for hook in conv._forward_pre_hooks.values()):
            conv.register_forward_pre_hook(_nchw_input)
    return module
