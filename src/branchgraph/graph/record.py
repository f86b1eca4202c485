"""Measured training memory: the bytes autograd really saves for backward, per module, and a step's peak."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from branchgraph.graph.capture import layer_failure
from branchgraph.graph.cost import layer_macs


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load_mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()


def heap_in_use() -> int | None:
    """Bytes the C heap has handed out and not taken back (glibc ``mallinfo2``: arenas plus mmap'd blocks).

    PyTorch's CPU tensors live there, so differences of this number measure tensor memory. ``None`` where
    the C library has no ``mallinfo2`` (not glibc >= 2.33).
    """
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


@dataclass
class LayerRecord:
    """What one module did in the measured step (summed over calls)."""

    output_shape: list[int] | None = None
    input_shape: list[int] | None = None
    macs: int = 0
    backward_macs: int = 0
    saved_bytes: int = 0
    calls: int = 0


@dataclass
class Measurement:
    """Per-module records of one forward+backward, the total saved bytes and the step's peak.

    ``forward_bytes`` is the heap the forward left allocated when it returned: what is kept for backward as the
    allocator sees it, including what saved-tensor hooks cannot see (the inputs a checkpoint holds).
    """

    layers: dict[str, LayerRecord]
    saved_bytes: int
    peak_bytes: int | None
    order: list[str] = field(default_factory=list)
    forward_bytes: int | None = None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class _AfterEveryOp(TorchDispatchMode):
    """Calls ``callback`` after every aten operator, forward and backward (recomputations inside checkpoints
    included, which saved-tensor hooks do not see)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        super().__init__()
        self.callback = callback

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.callback()
        return out


def measure(model: nn.Module, example: torch.Tensor) -> Measurement:
    """Run one training-mode forward+backward of ``model`` on ``example`` and record, per module path:
    output shapes, MACs, and the bytes of the tensors autograd saved while that module ran innermost.

    Saved tensors are seen through ``torch.autograd.graph.saved_tensors_hooks``; each storage is counted once,
    for the first module that saved it; parameters and the input batch (and views of them) are left out. The peak is the
    heap in use above the starting point, sampled at every pack and unpack of a saved tensor and at every
    module boundary and after every operator. The model's own state is untouched: the caller passes a copy.
    """
    layers: dict[str, LayerRecord] = defaultdict(LayerRecord)
    names = {m: n for n, m in model.named_modules()}
    # Parameters and the input batch exist without autograd: only what autograd adds is counted.
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_storages.add(example.untyped_storage().data_ptr())
    seen: set[int] = set()
    stack: list[str] = []
    order: list[str] = []
    base = heap_in_use()
    peak = [0]
    backward = [False]  # saves during backward are recomputations, transient: sampled for the peak only

    def sample() -> None:
        if base is not None:
            now = heap_in_use()
            peak[0] = max(peak[0], (now or 0) - base)

    def pre_hook(module: nn.Module, args: Any) -> None:
        stack.append(names[module])
        sample()

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        name = stack.pop()
        rec = layers[name]
        if backward[0]:
            # A recomputation in backward (checkpoint, reversible block) is not another call of the forward. A
            # reversible block's forward ran without grad, so its backward MACs are those of this recomputation.
            ins, outs = list(_tensors(args)), list(_tensors(output))
            if ins and outs and not list(module.children()) and rec.backward_macs == 0:
                rec.backward_macs = layer_macs(module, ins[0], outs[0])[1]
            sample()
            return
        if rec.calls == 0:
            order.append(name)
        rec.calls += 1
        outs = list(_tensors(output))
        ins = list(_tensors(args))
        if outs:
            rec.output_shape = list(outs[0].shape)
        if ins:
            rec.input_shape = list(ins[0].shape)
        if ins and outs and not list(module.children()):
            fwd, bwd = layer_macs(module, ins[0], outs[0])
            rec.macs += fwd
            rec.backward_macs += bwd
        sample()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if not backward[0] and ptr not in seen and ptr not in param_storages and storage.device.type != "meta":
            seen.add(ptr)
            layers[stack[-1] if stack else ""].saved_bytes += storage.nbytes()
        sample()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        sample()
        return tensor

    pre_hook.observer = post_hook.observer = True  # type: ignore[attr-defined]  # a planned model keeps its plan
    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    handles += [m.register_forward_hook(post_hook) for m in model.modules()]
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack), _AfterEveryOp(sample):
            try:
                output = model(example)
            except Exception as exc:  # re-raised naming the innermost layer that was running
                raise layer_failure(model, stack[-1] if stack else "", tuple(example.shape), exc) from None
            loss = sum(t.float().sum() for t in _tensors(output))
            sample()
            after_forward = heap_in_use()
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                backward[0] = True
                loss.backward()
            sample()
    finally:
        for h in handles:
            h.remove()
    return Measurement(dict(layers), sum(r.saved_bytes for r in layers.values()),
                       peak[0] if base is not None else None, order,
                       after_forward - base if base is not None and after_forward is not None else None)
