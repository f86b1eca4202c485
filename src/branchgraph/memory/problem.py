"""What the checkpoint planner chooses from: candidate regions, the storages one training forward saved and who
saved them, and the saving ops that shrink them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Region:
    """What one checkpoint recomputes: module ``path`` whole ("module"), its children [start, stop) (an
    nn.Sequential's "segment"), or units [start, stop) of the traced graph ("graph", from the module (else the
    node) ``first`` to ``last``)."""

    path: str
    kind: str
    start: int | None = None
    stop: int | None = None
    first: str = ""
    last: str = ""

    @property
    def name(self) -> str:
        if self.kind == "graph":
            return self.first if self.first == self.last else f"{self.first} .. {self.last}"
        base = self.path or "<model>"
        return base if self.start is None else f"{base}[{self.start}:{self.stop}]"


@dataclass
class Saves:
    """Which storages one training forward saved for backward, and which unit saved each (pairs)."""

    sizes: np.ndarray  # bytes per storage
    entry_storage: np.ndarray  # (storage, unit) pairs: storage index ...
    entry_unit: np.ndarray  # ... and the saving unit's index

    def total(self) -> int:
        """Bytes of every saved storage, each once."""
        return int(self.sizes[np.unique(self.entry_storage)].sum())


@dataclass
class Shrink:
    """Saving ops from ``unit`` on: the (storage, unit) entries ``entries`` are no longer saved; ``added`` (unit
    -> bytes: masks, offsets) is saved instead, unless a checkpointed region covers ``unit``; ``rebuilt`` (unit ->
    bytes) is what a unit's backward materialises again for a moment (a compact max pool's int64 indices)."""

    unit: int
    entries: np.ndarray
    added: dict[int, int]
    rebuilt: dict[int, int] = field(default_factory=dict)


@dataclass
class Problem:
    """What the planner chooses from: the profile's saves, and per candidate region its units (mask), input
    storages, recomputation time and MACs; and the whole forward's time and MACs."""

    saves: Saves
    regions: list[Region]
    masks: np.ndarray  # (region, unit) bool
    inputs: list[np.ndarray]
    seconds: np.ndarray
    macs: np.ndarray
    forward_seconds: float
    forward_macs: int
    shrinks: list[Shrink | None] | None = None  # per region: what its saving op keeps instead
    inner: list[list[int]] | None = None  # per region: the saving ops (region indices) its recomputation runs
    element: np.ndarray | None = None  # per storage: bytes per element (None: not profiled, module regions)
    narrowable: np.ndarray | None = None  # per storage: lossy saves keep it in bf16 (``lossy.narrows``)
