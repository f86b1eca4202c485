"""Parameter and MAC counts per layer, from the layer and the shapes it saw.

Conventions (one multiply-accumulate = 1 MAC):
- Conv2d: N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w; Linear: rows * in * out (bias adds not counted).
- Max/avg pooling: one op per window element, N * C * H_out * W_out * k_h * k_w; adaptive avg pooling: one per input
  element. BatchNorm: one per element (x * scale + shift). ReLU, Dropout, Flatten, cat: 0.
- Backward: the weight gradient costs what the forward did and so does the input gradient, each counted only when
  it is needed (the weight requires grad; the input requires grad). Pooling and BatchNorm backward: one and two per
  element.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d)
ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def param_counts(module: nn.Module) -> tuple[int, int]:
    """(parameters, parameters without biases) held directly by ``module`` (not its children)."""
    total = no_bias = 0
    for name, p in module.named_parameters(recurse=False):
        total += p.numel()
        if name != "bias":
            no_bias += p.numel()
    return total, no_bias


def _kernel_area(kernel: int | tuple[int, ...]) -> int:
    return math.prod(kernel) if isinstance(kernel, tuple) else kernel * kernel


def layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(forward MACs, backward MACs) of one call of a leaf ``module`` on ``inp`` giving ``out``."""
    input_grad = inp.requires_grad
    weight = getattr(module, "weight", None)
    weight_grad = isinstance(weight, torch.Tensor) and weight.requires_grad
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        fwd = out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return fwd, fwd * (int(input_grad) + int(weight_grad))
    if isinstance(module, nn.Linear):
        fwd = out.numel() * module.in_features
        return fwd, fwd * (int(input_grad) + int(weight_grad))
    if isinstance(module, POOLS):
        fwd = out.numel() * _kernel_area(module.kernel_size)
        return fwd, out.numel() * int(input_grad)
    if isinstance(module, ADAPTIVE_POOLS):
        return inp.numel(), inp.numel() * int(input_grad)
    if isinstance(module, NORMS):
        return out.numel(), 2 * out.numel() * int(input_grad or weight_grad)
    return 0, 0
