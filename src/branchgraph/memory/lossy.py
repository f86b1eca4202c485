"""Lossy storage of saved activations: the float32/float64 activations autograd saves for backward are kept in
bfloat16 (half of float32's bytes, a quarter of float64's) and widened again when backward reads them.

Off by default and labelled lossy everywhere it appears: a bf16 copy keeps 8 of float32's 24 significand bits, so
the gradients that read a saved activation (a convolution's or linear layer's weight gradient, BatchNorm's) change
by up to about 2^-9 relative per element. Gradients with respect to inputs that only read weights, masks or indices
stay exact. ``verify.grad_error`` measures the change in float64 against the exact gradients, and ``plan`` refuses a
model where it exceeds ``TOLERANCE``.

Only activations are narrowed (floating tensors with a ``grad_fn``, not views of a leaf): parameters, buffers and
the input batch exist anyway, and a copy of them would add memory. A tensor saved by several ops (a ReLU's
output, read again by the next convolution) is narrowed once. A checkpointed region's inputs are kept whole
(``exact_saves``): recomputing from narrowed inputs carries the rounding through every layer of the region
(float64 gradient changes of 3e-2 to 0.17 on the registry's nets, against 1e-3 to 4e-3 with whole inputs).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

LOSSY = ("bf16",)
TOLERANCE = 1e-2  # the largest relative change of all parameter gradients together (float64) a plan may make
NARROWED = (torch.float32, torch.float64)
_EXACT = threading.local()  # .depth > 0: saves are kept as they are (a checkpoint's inputs)


@contextlib.contextmanager
def exact_saves() -> Iterator[None]:
    """While entered, narrowing saves keeps tensors as they are (around a checkpoint call: its saved inputs)."""
    _EXACT.depth = getattr(_EXACT, "depth", 0) + 1
    try:
        yield
    finally:
        _EXACT.depth -= 1


def narrows(t: torch.Tensor) -> bool:
    """Whether narrowed saves keep ``t`` in bfloat16: a float32/float64 activation (it has a ``grad_fn``) that is
    not a view of a leaf. The profile records this per storage, so the planner counts what the hooks do."""
    if t.dtype not in NARROWED or t.grad_fn is None or t.device.type == "meta":
        return False
    return t._base is None or t._base.grad_fn is not None  # a view of a leaf: a linear layer's weight.t()


class _Narrowing:
    """Pack and unpack hooks that keep saved activations in bfloat16, one copy per tensor, view of it and version
    (``F.linear`` on a 3-d input saves a new flattened view per call). Tensors kept as they are go with their
    version, and unpacking one changed in place since raises, as autograd does without hooks."""

    def __init__(self) -> None:
        # (id of the viewed tensor, offset, shape, strides, version) -> (the viewed tensor, its narrowed copy)
        self.copies: dict[tuple[Any, ...], tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor]]] = {}

    def pack(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.dtype | int]:
        if getattr(_EXACT, "depth", 0) or not narrows(t):
            # detached: a saved output holding its own grad_fn would make a reference cycle
            return (t.detach() if t.grad_fn is not None else t), t._version
        base = t if t._base is None else t._base
        key = (id(base), t.storage_offset(), tuple(t.shape), t.stride(), t._version)
        found = self.copies.get(key)
        if found is not None and found[0]() is base and (narrow := found[1]()) is not None:
            return narrow, t.dtype
        narrow = t.detach().to(torch.bfloat16)
        self.copies[key] = (weakref.ref(base), weakref.ref(narrow))
        return narrow, t.dtype

    @staticmethod
    def unpack(packed: tuple[torch.Tensor, torch.dtype | int]) -> torch.Tensor:
        kept, tag = packed
        if isinstance(tag, torch.dtype):
            return kept.to(tag)
        if kept._version != tag:
            raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                               f"inplace operation: it is at version {kept._version}; expected version {tag}")
        return kept


@contextlib.contextmanager
def narrowed_saves() -> Iterator[None]:
    """While entered, saved activations are kept in bfloat16. Hooks already active (an outer recorder's) see and
    store the narrowed tensors, so what they count is what is kept."""
    hooks = _Narrowing()
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    pack: Callable[[torch.Tensor], Any] = hooks.pack
    unpack: Callable[[Any], torch.Tensor] = hooks.unpack
    if outer is not None:
        outer_pack, outer_unpack = outer

        def pack(t: torch.Tensor) -> Any:
            kept, tag = hooks.pack(t)
            return outer_pack(kept), tag

        def unpack(packed: Any) -> torch.Tensor:
            return hooks.unpack((outer_unpack(packed[0]), packed[1]))

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        hooks.copies.clear()


def narrowed_bytes(sizes: np.ndarray, element: np.ndarray, narrowable: np.ndarray) -> np.ndarray:
    """Bytes per storage once the ``narrowable`` ones (see ``narrows``) are kept in bfloat16."""
    out = sizes.copy()
    out[narrowable] = sizes[narrowable] * 2 // element[narrowable]
    return out
