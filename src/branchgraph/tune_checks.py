"""How the tuner accepts a candidate: its main output within a tolerance of fp32 eager's (normwise; fp32 and
reduced precision have their own), and an int8 one by its top-1 accuracy on held-out images instead, with a
loose bound on its outputs as a sanity check (``branchgraph.inference.int8``)."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from branchgraph.candidates import Candidate
from branchgraph.inference.engines import Built
from branchgraph.inference.int8 import INT8_OUTPUT_BOUND, SANITY_IMAGES, Calibration, accuracy_gate, top1
from branchgraph.passes.verification import FP32_TOLERANCE, output_error


def candidate_output(net: nn.Module, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
    """The main output of one forward in inference mode, in float32, under the candidate's autocast when eager
    (a training candidate is copied into eval mode first, so its statistics stay)."""
    if cand.engine == "torch" and not cand.weights:
        net = copy.deepcopy(net).eval()
    context = torch.autocast(x.device.type, dtype=cand.autocast) if cand.autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        out = net(x)
    return (out[0] if isinstance(out, tuple) else out).float()


@dataclass
class Checks:
    """What every candidate of one tuning is checked against: fp32 eager's output on the timed example, the
    reduced-precision ``tolerance``, and for int8 the ``calibration`` data's held-out images."""

    model: nn.Module
    example: torch.Tensor
    tolerance: float
    calibration: Calibration | None = None
    reference: torch.Tensor = field(init=False)
    accuracy: dict[str, float] = field(default_factory=dict)  # held-out top-1: "fp32 eager" and each int8 one

    def __post_init__(self) -> None:
        self.reference = candidate_output(self.model, self.example, Candidate())

    def limit(self, cand: Candidate) -> float:
        """The normwise output error ``cand`` may have."""
        return {"fp32": FP32_TOLERANCE, "int8": INT8_OUTPUT_BOUND}.get(cand.precision, self.tolerance)

    def judge(self, built: Built, cand: Candidate) -> tuple[float, str | None]:
        """``cand``'s output error against fp32 eager (int8: on held-out images, the data it was calibrated for,
        not the random timing batch), and why it is rejected, or None."""
        if cand.precision == "int8" and self.calibration is None:
            return float("nan"), "int8 needs calibration data to be judged on"
        if cand.precision == "int8":
            images = self.calibration.val[0][:SANITY_IMAGES]
            reference = candidate_output(self.model, images, Candidate())
            error = output_error(candidate_output(built.net, images, cand), reference)
        else:
            error = output_error(candidate_output(built.net, built.x, cand), self.reference)
        if not error <= self.limit(cand):
            return error, f"outputs {error:.2e} off fp32 normwise (> {self.limit(cand):g})"
        if cand.precision != "int8":
            return error, None
        if "fp32 eager" not in self.accuracy:
            self.accuracy["fp32 eager"] = top1(copy.deepcopy(self.model).eval(), *self.calibration.val)
        self.accuracy[cand.name], why = accuracy_gate(built.net, self.calibration, self.accuracy["fp32 eager"])
        return error, why
