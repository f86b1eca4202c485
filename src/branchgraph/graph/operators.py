"""Forward MACs per operator type, counted at the aten level, so functional calls (``F.max_pool2d``, ``torch.cat``,
``x + y``) count as well as modules.

Types: ``conv`` and ``linear`` (multiply-accumulates of the weights, bias adds left out: fvcore's convention and
half of torch.utils.flop_counter's FLOPs; ``linear`` is every 2-D matrix product, Linear layers on inputs of any rank
included), ``matmul`` (batched products of activations: bmm, baddbmm, einsum and ``x @ y`` on 3-D and more, and
scaled dot-product attention's two products, q.k^T and attention.v, however the kernel is fused), ``bias`` (one add
per output element of a conv/linear with a bias:
``conv + linear + bias`` is torchinfo's "Mult-Adds" of its Conv/Linear layers, and ptflops' count for them),
``pool`` (one op per window element; adaptive average: one per input element), ``norm`` (one per output element)
and ``elementwise`` (one per output element of every other pointwise aten op: ReLU, add, mul, ...).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

TYPES = ("conv", "linear", "matmul", "bias", "pool", "norm", "elementwise")
# The headline total: every type but elementwise, so it is never below conv + linear + bias (torchinfo's Mult-Adds).
COUNTED = TYPES[:-1]
aten = torch.ops.aten
_POOLS = {aten.max_pool2d_with_indices.default, aten.max_pool2d.default, aten.avg_pool2d.default,
          aten.max_pool1d.default, aten.avg_pool1d.default, aten.max_pool3d_with_indices.default,
          aten.avg_pool3d.default}
_ADAPTIVE = {aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool1d.default, aten.adaptive_max_pool2d.default,
             aten._adaptive_avg_pool3d.default, aten.mean.dim}
_NORMS = {aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
          aten._native_batch_norm_legit_no_training.default, aten.native_layer_norm.default,
          aten.native_group_norm.default}
# Fused attention kernels (the math one decomposes into bmm and is counted there); some exist only in newer torch.
_ATTENTION = {getattr(aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable") if hasattr(aten, name)}


def _out(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple | list) else result


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.totals = dict.fromkeys(TYPES, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        self._count(func, args, _out(result))
        return result

    def _count(self, func: Any, args: tuple[Any, ...], out: torch.Tensor) -> None:
        t = self.totals
        if func is aten.convolution.default:
            weight, bias = args[1], args[2]
            t["conv"] += out.numel() * math.prod(weight.shape[1:])
            t["bias"] += out.numel() if bias is not None else 0
        elif func in (aten.addmm.default, aten.mm.default):
            a = args[1] if func is aten.addmm.default else args[0]
            t["linear"] += out.numel() * a.shape[-1]
            t["bias"] += out.numel() if func is aten.addmm.default else 0
        elif func in (aten.bmm.default, aten.baddbmm.default):
            t["matmul"] += out.numel() * args[0 if func is aten.bmm.default else 1].shape[-1]
        elif func in _ATTENTION:
            query, key, value = args[:3]
            t["matmul"] += math.prod(query.shape[:-1]) * key.shape[-2] * (query.shape[-1] + value.shape[-1])
        elif func in _POOLS:
            kernel = args[1]
            t["pool"] += out.numel() * math.prod(kernel if isinstance(kernel, list | tuple) else [kernel])
        elif func in _ADAPTIVE:
            t["pool"] += args[0].numel()
        elif func in _NORMS:
            t["norm"] += out.numel()
        elif torch.Tag.pointwise in func.tags and isinstance(out, torch.Tensor):
            t["elementwise"] += out.numel()


def operator_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Forward MACs of ``model`` on ``example`` per operator type (``TYPES``), from one forward without autograd
    in the model's current mode; their headline total is ``sum(macs[t] for t in COUNTED)``."""
    counter = _Counter()
    with torch.no_grad(), counter:
        model(example)
    return counter.totals
