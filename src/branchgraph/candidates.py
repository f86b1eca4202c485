"""The candidates a tuner can time: a precision, a memory layout, a pass set, reduced-precision weights and an
engine (eager torch, Inductor with freezing, ONNX Runtime, OpenVINO), and which of them are worth timing on a
device: bf16 only where it is native, runtimes only where they are installed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from branchgraph.choices import CONCRETE_PRECISIONS, Precision
from branchgraph.errors import ConfigError
from branchgraph.hardware import cpu_capability, native_bf16
from branchgraph.inference.int8 import int8_available
from branchgraph.inference.pt2e import pt2e_available
from branchgraph.inference.runtimes import INSTALL, available
from branchgraph.passes.manager import resolve

DTYPES = {p: Precision(p).dtype for p in CONCRETE_PRECISIONS}  # precision name -> torch dtype
ENGINES = ("torch", "compiled", "onnxruntime", "openvino")
RUNTIME_ENGINES = ("onnxruntime", "openvino")

@dataclass(frozen=True)
class Candidate:
    """One way to run the model: arithmetic precision, memory layout, the passes (None: eager), whether the
    weights themselves are cast to ``precision`` (not autocast), and the engine: ``torch`` (eager), ``compiled``
    (Inductor with freezing), ``onnxruntime`` or ``openvino`` (the exported ONNX graph)."""

    precision: str = "fp32"
    channels_last: bool = False
    passes: tuple[str, ...] | None = None
    weights: bool = False
    engine: str = "torch"

    @property
    def name(self) -> str:
        if self.engine in ("onnxruntime", "openvino"):
            return f"{self.engine} {self.precision}"
        layout = "channels_last" if self.channels_last else "NCHW"
        text = f"{self.precision}{' weights' if self.weights else ''} {layout}"
        if self.engine == "compiled":
            return f"{text}, compiled (frozen)"
        return text if self.passes is None else f"{text} + passes {','.join(self.passes) or 'none'}"

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype to run the forward under ``torch.autocast``: eager reduced precision only (with passes,
        the ``precision`` pass puts autocast into the graph; cast weights need none)."""
        eager = self.passes is None and not self.weights and self.engine == "torch"
        return DTYPES[self.precision] if self.precision != "fp32" and eager else None

    def pass_list(self) -> list[str]:
        """The passes that give this candidate on a captured graph (layout and precision as passes, last but
        ``parallel``, which must stay last)."""
        base = [p for p in (self.passes or ()) if p not in ("layout", "precision", "parallel")]
        extra = (["layout"] if self.channels_last else []) + (["precision"] if self.precision != "fp32" else [])
        return base + extra + (["parallel"] if "parallel" in (self.passes or ()) else [])


def usable_precisions(device: torch.device, precisions: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The precisions worth timing on ``device`` and those left out with the reason: bf16 only where it is native
    (emulated bf16 is several times slower), fp16 only on CUDA; named ``precisions`` are kept as given."""
    wanted = list(precisions or DTYPES)
    unknown = [p for p in wanted if p not in DTYPES]
    if unknown:
        raise ConfigError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
    kept, left_out = [], {}
    for p in wanted:
        if precisions is not None:
            kept.append(p)
        elif p == "bf16" and not native_bf16(device):
            where = "GPU" if device.type == "cuda" else f"CPU ({cpu_capability()}, no avx512_bf16/amx_bf16 flag)"
            left_out[p] = f"no native bf16 on this {where}: emulated, several times slower"
        elif p == "fp16" and device.type != "cuda":
            left_out[p] = "fp16 autocast is for CUDA; CPUs run it emulated"
        else:
            kept.append(p)
    return kept, left_out


def candidates(
    device: torch.device, mode: str, layouts: Sequence[bool] = (False, True),
    pass_sets: Sequence[Sequence[str] | None] = (None,), precisions: Sequence[str] | None = None,
    engines: Sequence[str] | None = None, calibration: bool = False,
) -> tuple[list[Candidate], dict[str, str]]:
    """Every candidate worth timing on ``device`` and those left out with the reason: precision (``usable_precisions``)
    x layout x pass set in eager torch (``layout`` and ``precision`` in a pass set are dropped: they are the layout
    and precision axes); for inference also reduced-precision weights, Inductor with freezing (fp32 NCHW and
    reduced-precision weights channels_last), and ONNX Runtime and OpenVINO where installed; where ``calibration``
    data is known, int8 in OpenVINO (NNCF) and compiled (PT2E). ``engines`` (default: all of ``ENGINES`` for
    inference, ``torch`` for training) limits them."""
    chosen_engines = list(engines) if engines is not None else list(ENGINES if mode == "eval" else ("torch",))
    unknown = [e for e in chosen_engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engine {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if mode != "eval" and chosen_engines != ["torch"]:
        raise ConfigError("engines other than torch run inference only: use them with mode 'eval'",
                          param="engines")
    kept, left_out = usable_precisions(device, precisions)
    sets = [None if ps is None else tuple(p for p in ps if p not in ("layout", "precision")) for ps in pass_sets]
    for passes in sets:
        if passes is not None:
            resolve(list(passes), mode)
    found: list[Candidate] = []
    reduced = [p for p in kept if p != "fp32"]
    if "torch" in chosen_engines:
        found += [Candidate(p, cl, passes) for passes in dict.fromkeys(sets) for cl in dict.fromkeys(layouts)
                  for p in kept]
        if mode == "eval" and None in sets:  # eager with the weights themselves in reduced precision
            found += [Candidate(p, cl, weights=True) for cl in dict.fromkeys(layouts) for p in reduced]
    if "compiled" in chosen_engines:
        found += [Candidate(engine="compiled"), *(Candidate(p, True, weights=True, engine="compiled")
                                                  for p in reduced)]
        if mode == "eval" and device.type == "cpu":
            _int8(found, left_out, calibration, "compiled", pt2e_available())
    for runtime in (e for e in RUNTIME_ENGINES if e in chosen_engines):
        if device.type != "cpu":
            left_out[runtime] = f"compared on the CPU only (this model runs on {device.type})"
        elif not available(runtime):
            left_out[runtime] = f"not installed: {INSTALL}"
        else:
            found.append(Candidate("fp32", engine=runtime))
            if runtime == "openvino" and "bf16" in kept:
                found.append(Candidate("bf16", engine=runtime))
            if runtime == "openvino":
                _int8(found, left_out, calibration, runtime, int8_available())
    if not found:
        raise ConfigError(f"no candidate to time among engines {', '.join(chosen_engines)}: "
                          + "; ".join(f"{k}: {v}" for k, v in left_out.items()))
    return found, left_out


def _int8(found: list[Candidate], left_out: dict[str, str], calibration: bool, engine: str, missing: str | None
          ) -> None:
    """``engine``'s int8 candidate (OpenVINO through NNCF, or PT2E compiled by Inductor) among ``found`` where
    calibration data is known and its package (``missing`` says which not) is installed, else why not."""
    cand = Candidate("int8", engine=engine)
    if not calibration:
        left_out[cand.name] = ("no calibration data: give a trained run as the model, or calibration images "
                               "(int8 is accepted by held-out accuracy, not by a tolerance)")
    elif missing:
        left_out[cand.name] = missing
    else:
        found.append(cand)
