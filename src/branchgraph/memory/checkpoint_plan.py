"""What a checkpoint plan chose and predicts (``CheckpointPlan``): the planner's result, as data and as text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from branchgraph.memory import lossy
from branchgraph.memory.budget import MIB
from branchgraph.memory.measure import VariantResult
from branchgraph.memory.problem import Region

PEAK_ABOVE_PLAIN = ("the predicted peak is above the plain step's: recomputing the largest region in backward needs "
                    "more than the plan saves; bound the step's peak with a peak budget instead")


@dataclass
class CheckpointPlan:
    """The regions to recompute, what the plan predicts for one training step at ``input_shape`` and the step's
    measured heap peak.

    The predicted peak is the larger of the kept bytes at the forward's end and, for each region recomputed in
    backward, what is still kept from before it + its recomputation + ``grad_bytes`` (parameter gradients and the
    largest activation's gradient). A fractional peak budget is of the plain step's measured peak."""

    input_shape: list[int]
    budget_bytes: int | None  # the kept-bytes budget (None: only a peak budget was given)
    plain_saved_bytes: int
    saved_bytes: int
    forward_macs: int
    extra_macs: int
    forward_seconds: float  # the profiled forward's time, for the recomputation's share of it
    extra_seconds: float  # recomputed layers' forward time plus the per-region overhead below
    region_overhead_seconds: float
    largest_recompute_bytes: int  # what recomputing the largest region materialises again during backward
    predicted_peak_bytes: int
    plain_peak_bytes: int  # the plain step's predicted peak
    regions: list[Region] = field(default_factory=list)
    method: str = "graph"  # "graph": regions of the fx graph; "modules": module regions (fx could not trace)
    saving_ops: list[int] = field(default_factory=list)  # graph units replaced by exact saving ops
    saving_op_names: list[str] = field(default_factory=list)  # "node (relu|max_pool)"
    grad_bytes: int = 0
    peak_budget_bytes: int | None = None
    note: str | None = None
    plain_measured_peak_bytes: int | None = None  # heap peaks of one step, plain and planned (None: not measured)
    measured_peak_bytes: int | None = None
    lossy: str | None = None  # "bf16": saved activations kept in bfloat16 (branchgraph.memory.lossy), not exact
    lossy_grad_error: float | None = None  # relative change of the parameter gradients it makes (float64)
    compared: list[VariantResult] | None = field(default=None, repr=False)  # plain and planned steps, measured
    grad_change: float | None = None  # the planned step's parameter gradients against plain's, relative (float64)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("compared")  # as rows of their own (``VariantResult.to_dict``), where they were measured
        data["regions"] = [{"name": r.name, **asdict(r)} for r in self.regions]
        data["saved_fraction"] = self.saved_bytes / self.plain_saved_bytes if self.plain_saved_bytes else 0.0
        data["extra_forward_macs_fraction"] = self.extra_macs / self.forward_macs if self.forward_macs else 0.0
        data["extra_forward_time_fraction"] = (self.extra_seconds / self.forward_seconds if self.forward_seconds
                                               else 0.0)
        data["peak_above_plain"] = self.peak_above_plain
        return data

    @property
    def peak_above_plain(self) -> bool:
        """Whether the plan's predicted peak is above the plain step's (a recomputed region materialises more in
        backward than the plan saves): it keeps fewer bytes, yet needs more memory at its peak."""
        return self.predicted_peak_bytes > self.plain_peak_bytes

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        d = self.to_dict()
        budget = "budget " + ", ".join(f"{value / MIB:.1f} MiB {what}" for value, what in (
            (self.budget_bytes, "kept"), (self.peak_budget_bytes, "peak")) if value is not None)
        lines = [
            f"input {self.input_shape}: plain saves {self.plain_saved_bytes / MIB:.1f} MiB for backward; {budget}",
            f"plan: {len(self.saving_ops)} saving ops, {len(self.regions)} checkpointed regions; predicted saved "
            f"{self.saved_bytes / MIB:.1f} MiB ({d['saved_fraction']:.1%} of plain), recompute "
            f"{self.extra_macs / 1e9:.2f} GMACs ({d['extra_forward_macs_fraction']:.1%} of the forward's MACs, "
            f"{d['extra_forward_time_fraction']:.1%} of its time), largest recomputation "
            f"{self.largest_recompute_bytes / MIB:.1f} MiB; predicted peak {self.predicted_peak_bytes / MIB:.1f} MiB "
            f"({self.predicted_peak_bytes / self.plain_peak_bytes:.1%} of plain's "
            f"{self.plain_peak_bytes / MIB:.1f} MiB)",
        ]
        if self.measured_peak_bytes is not None and self.plain_measured_peak_bytes:
            lines.append(f"measured peak {self.measured_peak_bytes / MIB:.1f} MiB "
                         f"({self.measured_peak_bytes / self.plain_measured_peak_bytes:.1%} of plain's "
                         f"{self.plain_measured_peak_bytes / MIB:.1f} MiB)")
        if self.grad_change is not None:
            lines.append(f"verified: a float64 training step of the planned model gives the plain model's parameter "
                         f"gradients within {self.grad_change:.1e} (relative)")
        if self.lossy is not None:
            lines.append(f"lossy: saved activations kept in {self.lossy}; parameter gradients change by "
                         f"{self.lossy_grad_error:.2e} relative in float64 (tolerance {lossy.TOLERANCE:g})")
        if self.note:
            lines.append(f"note: {self.note}")
        if self.peak_above_plain:
            lines.append(f"warning: {PEAK_ABOVE_PLAIN}")
        lines += [f"  {r.kind:<8} {r.name}" for r in self.regions]
        return "\n".join(lines)
