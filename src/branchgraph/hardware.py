"""What this machine can do: its processor, whether bf16 is native there, and its measured matmul peak."""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path
from typing import Any

import torch

from branchgraph.errors import ConfigError

# cpuinfo flags of native bf16 arithmetic: AVX-512-BF16 and AMX on x86-64, the BF16 extension on Arm.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Flags worth naming when a figure says which processor class it ran on.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The processor's name ("AMD EPYC 9454P", ...), as the OS reports it."""
    info = _cpuinfo()
    return info.get("model name") or info.get("CPU part") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The processor's ISA flags (x86 ``flags``, Arm ``Features``); empty where the OS does not list them."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_capability() -> str:
    """The widest vector ISA PyTorch's own CPU kernels dispatch to here ("AVX2", "AVX512", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 arithmetic is native on ``device``: on a CPU without it oneDNN emulates bf16, several times
    slower than fp32 (4.5x on an AVX2 processor), so bf16 is never a candidate there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def describe(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine as every benchmark figure names it: processor, ISA class, flags, threads, torch."""
    device = torch.device(device)
    data: dict[str, Any] = {
        "cpu": cpu_model(), "capability": cpu_capability(), "threads": torch.get_num_threads(),
        "flags": [f for f in REPORTED_FLAGS if f in cpu_flags()], "native_bf16": native_bf16("cpu"),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        data.update(gpu=torch.cuda.get_device_name(device), native_bf16=native_bf16(device))
    return data


def describe_text(device: torch.device | str = "cpu") -> str:
    """One line: ``AMD EPYC (AVX2; flags avx2; bf16 emulated), 2 threads, torch 2.13.0+cpu``."""
    d = describe(device)
    bf16 = "bf16 native" if d["native_bf16"] else "bf16 emulated"
    where = f"{d['gpu']}, " if "gpu" in d else ""
    return (f"{where}{d['cpu']} ({d['capability']}; flags {' '.join(d['flags']) or 'none listed'}; {bf16}), "
            f"{d['threads']} threads, torch {d['torch']}")


def matmul_peak(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", size: int = 1024,
                rounds: int = 5) -> float:
    """This machine's measured dense-matmul rate in GFLOP/s for ``dtype`` (best of ``rounds`` square
    ``size`` products, after one warm-up): the practical ceiling a network's step can be compared with."""
    device = torch.device(device)
    if dtype == torch.int8:
        return _int8_matmul_peak(size, rounds)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for i in range(rounds + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _int8_matmul_peak(size: int, rounds: int) -> float:
    """The CPU's measured int8 matmul rate (GOP/s, VNNI/AMX where the processor has them) through torch's x86
    quantized linear kernel (its default engine: oneDNN/FBGEMM); NaN where this torch has none."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that quantized tensors are deprecated
        try:
            import torch.ao.nn.quantized as nnq

            layer = nnq.Linear(size, size)
            layer.set_weight_bias(torch.quantize_per_tensor(torch.randn(size, size), 0.05, 0, torch.qint8), None)
            x = torch.quantize_per_tensor(torch.rand(size, size), 0.01, 0, torch.quint8)
        except (ImportError, RuntimeError, AttributeError):
            return float("nan")
        best = float("inf")
        for i in range(rounds + 1):
            start = time.perf_counter()
            layer(x)
            if i:
                best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but CUDA is not available; use device cpu", "device")
    return torch.device(name)
