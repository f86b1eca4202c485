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
if _MALLOPT is not None:
    _MALLOPT.argtypes, _MALLOPT.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
CAN_KEEP = _MALLOPT is not None  # glibc's mallopt is there (under an LD_PRELOADed allocator it changes nothing)
_kept = False


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
    """From now on, for the rest of this process, serve every block from glibc's heap (no mmap) and keep freed
    memory for reuse instead of returning it to the kernel (resident memory stays at least at the peak). Returns
    whether memory is kept: False, changing nothing, where the C library has no ``mallopt``."""
    global _kept
    if _MALLOPT is not None and not _kept:
        unmapped = _MALLOPT(_M_MMAP_MAX, 0)
        untrimmed = _MALLOPT(_M_TRIM_THRESHOLD, _INT_MAX)
        _kept = bool(unmapped and untrimmed)
    return _kept


def keeping() -> bool:
    """Whether this process keeps freed memory (``keep_freed_memory`` has taken effect)."""
    return _kept


def apply_heap_policy(policy: str) -> bool:
    """``keep``: ``keep_freed_memory``; ``system``: leave the C library as it is (a process that kept memory
    once keeps it: the policy is process-wide). Returns whether memory is kept."""
    if policy not in HEAP_POLICIES:
        raise ConfigError(f"heap must be one of {', '.join(HEAP_POLICIES)}; got {policy!r}", param="heap")
    return keep_freed_memory() if policy == "keep" else keeping()


__all__ = ["CAN_KEEP", "HEAP_POLICIES", "apply_heap_policy", "heap_in_use", "keep_freed_memory", "keeping"]
