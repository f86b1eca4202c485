"""Measured training memory: the bytes autograd really saves for backward, per module, and a step's peak."""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from branchgraph.graph.cost import layer_macs
from branchgraph.graph.tracing import layer_failure
from branchgraph.heap import heap_in_use


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


def tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in a module's arguments or outputs (nested tuples, lists and dicts), in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)


class StorageTable:
    """The storages a recorded run touches, numbered in the order first seen (by address), with their bytes,
    element size and whether they hold integers. Parameters, buffers and the input (``excluded``) exist without
    autograd and are left out, as are meta tensors. ``keep`` holds every storage seen, so that no address is
    reused during the run (a profile can afford it; a peak measurement cannot)."""

    def __init__(self, excluded: Iterable[torch.Tensor], keep: bool = True,
                 flag: Callable[[torch.Tensor], bool] | None = None) -> None:
        self.excluded = {t.untyped_storage().data_ptr() for t in excluded}
        self.flag = flag  # per storage, of the first tensor seen on it: ``flagged``
        self.flagged: list[bool] = []
        self.index: dict[int, int] = {}
        self.sizes: list[int] = []
        self.element: list[int] = []
        self.integer: list[bool] = []
        self.kept: list[torch.Tensor] | None = [] if keep else None

    def id(self, t: torch.Tensor) -> int | None:
        """The storage's number, or None for an excluded or meta one."""
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.excluded or storage.device.type == "meta":
            return None
        if ptr not in self.index:
            self.index[ptr] = len(self.sizes)
            self.sizes.append(storage.nbytes())
            self.element.append(t.element_size())
            self.integer.append(not (t.is_floating_point() or t.is_complex()))
            self.flagged.append(self.flag is not None and self.flag(t))
            if self.kept is not None:
                self.kept.append(t)
        return self.index[ptr]


class SavedTensors:
    """While entered, records (storage number, ``owner()``) for every tensor autograd saves (an owner of None,
    or a storage the table leaves out, records nothing)."""

    def __init__(self, table: StorageTable, owner: Callable[[], int | None]) -> None:
        self.table, self.owner = table, owner
        self.pairs: list[tuple[int, int]] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        who = self.owner()
        if who is not None:
            sid = self.table.id(t)
            if sid is not None:
                self.pairs.append((sid, who))
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def entries(self) -> np.ndarray:
        """The distinct (storage, owner) pairs, sorted, as an (n, 2) int64 array."""
        return np.array(sorted(set(self.pairs)), dtype=np.int64).reshape(-1, 2)


class _AfterEveryAllocation(TorchDispatchMode):
    """Calls ``callback`` after every aten operator that returns a storage its arguments did not hold (what
    allocates tensor memory), forward and backward (recomputations inside checkpoints included, which saved-tensor
    hooks do not see). Views, in-place ops and detach allocate nothing: about half of a training step's ops."""

    def __init__(self, callback: Callable[[], None]) -> None:
        super().__init__()
        self.callback = callback

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        held = {t.untyped_storage().data_ptr() for t in tensors((args, kwargs)) if t.layout == torch.strided}
        out = func(*args, **(kwargs or {}))
        # A sparse or nested output has no one storage to compare: sampled as allocating.
        if any(t.layout != torch.strided or t.untyped_storage().data_ptr() not in held for t in tensors(out)):
            self.callback()
        return out


class ModuleCalls:
    """While entered, every module of ``model`` is hooked: ``current`` is the path of the innermost module running
    ("" outside any), ``on_enter(path, module, args)`` runs before each call and ``on_call(path, module, args,
    output, seconds)`` after it. The hooks are observers: a planned model keeps running its plan."""

    def __init__(self, model: nn.Module,
                 on_call: Callable[[str, nn.Module, Any, Any, float], None] | None = None,
                 on_enter: Callable[[str, nn.Module, Any], None] | None = None) -> None:
        self.model, self.on_call, self.on_enter = model, on_call, on_enter
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[tuple[str, float]] = []
        self._handles: list[Any] = []

    @property
    def current(self) -> str:
        return self.stack[-1][0] if self.stack else ""

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self.on_enter is not None:
            self.on_enter(self.names[module], module, args)
        self.stack.append((self.names[module], time.perf_counter()))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name, started = self.stack.pop()
        if self.on_call is not None:
            self.on_call(name, module, args, output, time.perf_counter() - started)

    _pre.observer = _post.observer = True  # type: ignore[attr-defined]

    def __enter__(self) -> ModuleCalls:
        self._handles = [m.register_forward_pre_hook(self._pre) for m in self.model.modules()]
        self._handles += [m.register_forward_hook(self._post) for m in self.model.modules()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def leaf_macs(module: nn.Module, args: Any, output: Any) -> tuple[int, int] | None:
    """(forward, backward) MACs of one call of a leaf module with tensor inputs and outputs; None otherwise."""
    ins, outs = list(tensors(args)), list(tensors(output))
    if not ins or not outs or list(module.children()):
        return None
    return layer_macs(module, ins[0], outs[0])


class _LayerRecorder:
    """Per module path, from ModuleCalls: calls, shapes and MACs of the forward; a call during backward is a
    recomputation (checkpoint, reversible block), which adds only its backward MACs."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerRecord] = defaultdict(LayerRecord)
        self.order: list[str] = []
        self.backward = False  # saves during backward are recomputations, transient: sampled for the peak only

    def __call__(self, name: str, module: nn.Module, args: Any, output: Any, seconds: float) -> None:
        rec = self.layers[name]
        macs = leaf_macs(module, args, output)
        if self.backward:
            # A reversible block's forward ran without grad, so its backward MACs are those of this recomputation.
            if macs is not None and rec.backward_macs == 0:
                rec.backward_macs = macs[1]
            return
        if rec.calls == 0:
            self.order.append(name)
        rec.calls += 1
        outs, ins = list(tensors(output)), list(tensors(args))
        if outs:
            rec.output_shape = list(outs[0].shape)
        if ins:
            rec.input_shape = list(ins[0].shape)
        if macs is not None:
            rec.macs += macs[0]
            rec.backward_macs += macs[1]


class _HeapPeak:
    """The heap in use above where it stood at creation, its highest sample kept (None where it cannot be read)."""

    def __init__(self) -> None:
        gc.collect()  # garbage of earlier work must not be freed inside the measured step, below its base
        self.base = heap_in_use()
        self.peak = 0

    def sample(self) -> None:
        if self.base is not None:
            self.peak = max(self.peak, (heap_in_use() or 0) - self.base)

    def above_base(self) -> int | None:
        now = heap_in_use()
        return now - self.base if self.base is not None and now is not None else None


def measure(model: nn.Module, example: torch.Tensor) -> Measurement:
    """Run one training-mode forward+backward of ``model`` on ``example`` and record, per module path:
    output shapes, MACs, and the bytes of the tensors autograd saved while that module ran innermost.

    Saved tensors are seen through ``torch.autograd.graph.saved_tensors_hooks``; each storage is counted once,
    for the first module that saved it; parameters, buffers and the input batch (and views of them) are left out.
    The peak is the heap in use above the starting point, sampled after every operator that allocates (tensor
    memory comes from operators; a heap long in use, fragmented, makes each sample cost up to milliseconds). The
    model's own state is untouched: the caller passes a copy.
    """
    paths = ["", *(n for n, _ in model.named_modules() if n)]
    position = {p: i for i, p in enumerate(paths)}
    table = StorageTable([*model.parameters(), *model.buffers(), example], keep=False)
    recorder, heap = _LayerRecorder(), _HeapPeak()
    model.train()
    calls = ModuleCalls(model, recorder)
    saved = SavedTensors(table, lambda: None if recorder.backward else position[calls.current])
    with calls, saved, _AfterEveryAllocation(heap.sample):
        try:
            output = model(example)
        except Exception as exc:  # re-raised naming the innermost layer that was running
            raise layer_failure(model, calls.current, tuple(example.shape), exc) from None
        loss = sum(t.float().sum() for t in tensors(output))
        heap.sample()
        after_forward = heap.above_base()
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            recorder.backward = True
            loss.backward()
        heap.sample()
    first: dict[int, int] = {}
    for sid, who in saved.pairs:  # each storage counted once, for the first module that saved it
        first.setdefault(sid, who)
    for sid, who in first.items():
        recorder.layers[paths[who]].saved_bytes += table.sizes[sid]
    layers = recorder.layers
    return Measurement(dict(layers), sum(r.saved_bytes for r in layers.values()),
                       heap.peak if heap.base is not None else None, recorder.order, after_forward)
