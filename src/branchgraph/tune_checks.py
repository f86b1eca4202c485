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
from branchgraph.passes.verification import FP32_TOLERANCE, REDUCED_PRECISION_TOLERANCE, output_error


def candidate_output(net: nn.Module, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
    """The main output of one forward in inference mode, in float32, under the candidate's autocast when eager
    (a training candidate is copied into eval mode first, so its statistics stay)."""
    if cand.engine == "torch" and not cand.weights:
        net = copy.deepcopy(net).eval()
    context = torch.autocast(x.device.type, dtype=cand.autocast) if cand.autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        out = net(x)
    return (out[0] if isinstance(out, tuple) else out).float()


def output_limit(precision: str, tolerance: float = REDUCED_PRECISION_TOLERANCE) -> float:
    """The normwise output error a candidate of ``precision`` may have against fp32 eager (``tolerance``: reduced
    precision's)."""
    return {"fp32": FP32_TOLERANCE, "int8": INT8_OUTPUT_BOUND}.get(precision, tolerance)


def checked_images(precision: str, example: torch.Tensor, calibration: Calibration | None) -> torch.Tensor:
    """What a candidate's outputs are checked on: the example, or for int8 the first held-out images (the data it
    was calibrated for, not a random batch)."""
    return calibration.val[0][:SANITY_IMAGES] if precision == "int8" and calibration is not None else example


@dataclass
class Checks:
    """What every candidate of one tuning is checked against: fp32 eager's output on the timed example, the
    reduced-precision ``tolerance``, and for int8 the ``calibration`` data's held-out images."""

    model: nn.Module
    example: torch.Tensor
    tolerance: float
    calibration: Calibration | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # held-out top-1: "fp32 eager" and each int8 one
    _references: dict[str, torch.Tensor] = field(default_factory=dict)  # fp32 eager's output per checked input

    def reference(self, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The input a candidate of ``precision`` is checked on, and fp32 eager's output there (computed once)."""
        images = checked_images(precision, self.example, self.calibration)
        key = "int8" if images is not self.example else "example"
        if key not in self._references:
            self._references[key] = candidate_output(self.model, images, Candidate())
        return images, self._references[key]

    def judge(self, built: Built, cand: Candidate) -> tuple[float, str | None]:
        """``cand``'s output error against fp32 eager (int8: on held-out images, the data it was calibrated for,
        not the random timing batch), and why it is rejected, or None."""
        if cand.precision == "int8" and self.calibration is None:
            return float("nan"), "int8 needs calibration data to be judged on"
        images, reference = self.reference(cand.precision)
        error = output_error(candidate_output(built.net, built.x if images is self.example else images, cand),
                             reference)
        limit = output_limit(cand.precision, self.tolerance)
        if not error <= limit:
            return error, f"outputs {error:.2e} off fp32 normwise (> {limit:g})"
        if cand.precision != "int8":
            return error, None
        if "fp32 eager" not in self.accuracy:
            self.accuracy["fp32 eager"] = top1(copy.deepcopy(self.model).eval(), *self.calibration.val)
        self.accuracy[cand.name], why = accuracy_gate(built.net, self.calibration, self.accuracy["fp32 eager"])
        return error, why
