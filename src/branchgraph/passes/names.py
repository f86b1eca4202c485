"""Original parameter names through passes that rename, as the passes' modules declare them: a module with
``pieces()`` stands for several original ones (each a slice of its weight and bias), and a module with
``original_name(key)`` wraps original modules and says what a name under it was. The verifier and checkpoint
conversion use this, not any one pass's internals."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _unwrapper(gm: nn.Module) -> Callable[[str], str]:
    """A name of ``gm``'s -> its name before wrapping passes: under a module with ``original_name`` (the parallel
    pass's branch wrapper), that module says."""
    wrappers = [(f"{n}.", m) for n, m in gm.named_modules() if n and callable(getattr(m, "original_name", None))]

    def unwrap(name: str) -> str:
        for prefix, module in wrappers:
            if name.startswith(prefix):
                return module.original_name(name[len(prefix):])
        return name

    return unwrap


def is_fused(module: nn.Module) -> bool:
    """Whether ``module`` stands for several original ones (it has ``pieces()``: fuse_parallel's fused convs)."""
    return callable(getattr(module, "pieces", None))


def fused_modules(gm: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``gm`` that stand for several original ones, with their paths."""
    return [(n, m) for n, m in gm.named_modules() if is_fused(m)]


def original_parameters(gm: nn.Module, grad: bool = False) -> dict[str, torch.Tensor | None]:
    """Every parameter (or, with ``grad``, its gradient) under its original, unfused name: a fused conv's
    pieces are slices of its weight and bias, so each original parameter's gradient is recovered exactly."""

    def pick(p: torch.Tensor) -> torch.Tensor | None:
        return p.grad if grad else p

    fused = dict(fused_modules(gm))
    unwrap_name = _unwrapper(gm)
    out = {unwrap_name(n): pick(p) for n, p in gm.named_parameters() if n.rsplit(".", 1)[0] not in fused}
    for module in fused.values():
        for source, part in module.pieces():
            for kind in ("weight", "bias"):
                tensor = getattr(module, kind)
                if tensor is not None:
                    value = pick(tensor)
                    out[f"{source}.{kind}"] = None if value is None else value[part]
    return out


def to_original_state_dict(gm: nn.Module) -> dict[str, torch.Tensor]:
    """``gm.state_dict()`` in the unfused model's layout (loads into the original model)."""
    unwrap_name = _unwrapper(gm)
    state = {unwrap_name(k): v for k, v in gm.state_dict().items()}
    for path, module in fused_modules(gm):
        weight = state.pop(f"{path}.weight")
        bias = state.pop(f"{path}.bias", None)
        for source, part in module.pieces():
            state[f"{source}.weight"] = weight[part].clone()
            if bias is not None:
                state[f"{source}.bias"] = bias[part].clone()
    return state


def from_original_state_dict(gm: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout state dict turned into ``gm``'s layout (for ``gm.load_state_dict``)."""
    state = dict(state)
    for path, module in fused_modules(gm):
        sources = [s for s, _ in module.pieces()]
        state[f"{path}.weight"] = torch.cat([state.pop(f"{s}.weight") for s in sources])
        if module.bias is not None:
            state[f"{path}.bias"] = torch.cat([state.pop(f"{s}.bias") for s in sources])
    unwrap_name = _unwrapper(gm)
    for key in gm.state_dict():
        if unwrap_name(key) != key and unwrap_name(key) in state:
            state[key] = state.pop(unwrap_name(key))
    return state
