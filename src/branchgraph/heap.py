"""The C heap PyTorch's CPU tensors live in (glibc): how much of it is in use, and how it gets memory.

glibc gives each block above its mmap threshold (128 KiB, rising to at most 32 MiB) fresh pages from the kernel
and returns them on free, so every large activation of every step costs a page fault per 4 KiB page on first
touch (a `googlenet-d2l` training step at batch 128, 96²: ~10⁵ faults). ``keep_freed_memory`` makes glibc serve
them from its heap and keep what is freed for the next step, as PyTorch's caching allocators do on GPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from branchgraph.errors import ConfigError

HEAP_POLICIES = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_INT_MAX = 2**31 - 1


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc_function(name: str) -> Any:
    """``name`` from the C library, or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLINFO2 = _libc_function("mallinfo2")
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
_MALLOPT = _libc_function("mallopt")


def heap_in_use() -> int | None:
    """Bytes the C heap has handed out and not taken back (glibc ``mallinfo2``: arenas plus mmap'd blocks).

    PyTorch's CPU tensors live there, so differences of this number measure tensor memory, whatever the heap
    policy. ``None`` where the C library has no ``mallinfo2`` (not glibc >= 2.33).
    """
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def keep_freed_memory() -> bool:
    """From now on, in this process, serve every block from glibc's heap (no mmap) and keep freed memory for reuse
    instead of returning it to the kernel (resident memory stays at the peak). Returns False, changing nothing,
    where the C library has no ``mallopt``."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_MAX, 0)) and bool(_MALLOPT(_M_TRIM_THRESHOLD, _INT_MAX))


def apply_heap_policy(policy: str) -> bool:
    """``keep``: ``keep_freed_memory``; ``system``: leave the C library's defaults. Returns whether memory is kept."""
    if policy not in HEAP_POLICIES:
        raise ConfigError(f"heap must be one of {', '.join(HEAP_POLICIES)}; got {policy!r}", param="heap")
    return policy == "keep" and keep_freed_memory()


__all__ = ["HEAP_POLICIES", "apply_heap_policy", "heap_in_use", "keep_freed_memory"]
