"""The choices every entry point shares (training or inference mode, numeric precision) and one table of each
command's defaults, read by the Python API's signatures and the CLI's flags (and shown by ``--help``)."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from branchgraph.errors import ConfigError


class _Choice(str, Enum):
    """A string enum (``enum.StrEnum`` is Python 3.11+): equal to its value, printed and formatted as it."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Mode(_Choice):
    """What a model is optimised, verified or timed for: training steps (gradients and weight updates checked)
    or inference."""

    TRAIN = "train"
    EVAL = "eval"


class Precision(_Choice):
    """Numeric precision of a model's compute; ``auto`` is chosen by timing the others on this machine."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of a concrete precision (``auto`` has none until it is chosen)."""
        if self is Precision.AUTO:
            raise ConfigError("precision auto has no dtype until it is chosen by timing")
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.value]


MODES = tuple(m.value for m in Mode)
PRECISIONS = tuple(p.value for p in Precision)
CONCRETE_PRECISIONS = tuple(p for p in PRECISIONS if p != Precision.AUTO)

# Each command's defaults, shared by the Python API (``branchgraph.<function>``) and the CLI command of the same
# use; the batch differs by purpose: one image describes a network (as torchsummary does), two are the fewest
# BatchNorm trains on, 32 is a training batch to plan memory for, 128 a batch whose timing is not dominated by
# per-call overhead.
DEFAULTS: dict[str, dict[str, Any]] = {
    "summary": {"batch": 1},
    "compare": {"batch": 1},
    "draw": {"batch": 1},
    "report": {"batch": 2},
    "optimize": {"mode": Mode.EVAL, "batch": 2, "tune_batch": 128},
    "plan": {"batch": 32},
    "branches": {"batch": 2},
    "bench": {"mode": Mode.EVAL, "batch": 128},
    "bench_parallel": {"mode": Mode.EVAL, "batches": (1, 8, 32, 128)},
}
# Seconds a torch.compile candidate may take to compile before tuning and benchmarks leave it out (a first compile
# of GoogLeNet takes about two minutes on two cores).
COMPILE_BUDGET_S = 600.0
COMMANDS = {"draw": "graph", "plan": "memory", "bench_parallel": "bench-parallel"}  # API name -> CLI command


def mode(value: str | Mode) -> Mode:
    """``value`` as a Mode; one ConfigError line naming the choices otherwise."""
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {value!r}", "mode") from None


def precision(value: str | Precision, allowed: tuple[str, ...] = PRECISIONS) -> Precision:
    """``value`` as a Precision among ``allowed``; one ConfigError line naming them otherwise."""
    if value not in allowed:
        raise ConfigError(f"precision must be one of {', '.join(allowed)}; got {value!r}", "precision")
    return Precision(value)


def defaults_table() -> str:
    """The defaults as a Markdown table (the docs show it; a test keeps the two equal)."""
    lines = ["| Python API | CLI command | defaults |", "| --- | --- | --- |"]
    for function, values in DEFAULTS.items():
        shown = ", ".join(f"`{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}`" for k, v in values.items())
        lines.append(f"| `branchgraph.{function}` | `{COMMANDS.get(function, function)}` | {shown} |")
    return "\n".join(lines)
