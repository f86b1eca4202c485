"""``optimize(model, example, passes, mode, verify)``: capture, run passes, and prove the result equal
(``branchgraph.passes.verification``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from branchgraph.choices import DEFAULTS
from branchgraph.errors import BranchgraphError
from branchgraph.graph.tracing import capture
from branchgraph.passes.base import PassReport, check_mode, reports
from branchgraph.passes.manager import resolve, run_passes
from branchgraph.passes.verification import Verification, VerificationError, verify_equal


@dataclass
class OptimizeReport:
    """Per pass what changed, and how closely the optimised model reproduces the original."""

    mode: str
    passes: list[PassReport]
    verification: Verification | None = None
    captured: str = "symbolic_trace"  # or "export": torch.export's aten graph (fx's tracer could not take the model)
    onnx: Path | None = None  # the ONNX file the optimised model was exported to, when asked

    @property
    def ok(self) -> bool | None:
        """Whether the optimised model reproduced the original; None when it was not verified."""
        return None if self.verification is None else not self.verification.failures()

    def to_dict(self) -> dict[str, Any]:
        data = {"mode": self.mode, "captured": self.captured, "passes": [p.to_dict() for p in self.passes],
                "verification": self.verification.to_dict() if self.verification else None}
        return data | ({"onnx": str(self.onnx)} if self.onnx is not None else {})

    def to_text(self, show: int = 3) -> str:
        """Per pass its node counts, the first ``show`` changes and the skips by reason; the verification."""
        return "\n".join([*self._captured_lines(), *self._pass_lines(show), *self._verified_lines(),
                          *self._onnx_lines()])

    def __str__(self) -> str:
        return self.to_text()

    def _captured_lines(self) -> list[str]:
        if self.captured != "export":
            return []
        return ["  captured with torch.export (torch.fx's symbolic tracer could not take it): an aten graph, so the "
                "passes that rewrite modules (fold_bn, fuse_parallel, prune) find nothing to change"]

    def _pass_lines(self, show: int) -> list[str]:
        lines = []
        for p in self.passes:
            lines.append(f"  {p.name:<14} nodes {p.nodes_before} -> {p.nodes_after}; "
                         f"{len(p.changed)} changes, {len(p.skipped)} skipped")
            lines += [f"      {c}" for c in p.changed[:show]]
            for reason, subjects in p.skipped_by_reason().items():
                named = [s.split(" [")[0] for s in subjects if s]  # the details are in to_dict()
                example = f" ({', '.join(named[:3])}{', ...' if len(named) > 3 else ''})" if named else ""
                lines.append(f"      skipped {len(subjects)}: {reason}{example}")
        return lines

    def _verified_lines(self) -> list[str]:
        if self.verification is None:
            return []
        v, lines = self.verification.to_dict(), []
        for family, c in v["float64_equivalence"].items():
            f32 = v["float32_error_vs_float64"][family]
            lines.append(f"  {family:<19} float64 normwise diff {c['norm_rel']:.1e}; float32 normwise error vs "
                         f"float64: original {f32['original']:.1e} (worst of {len(f32['original_variants'])} "
                         f"run(s)), optimised {f32['optimised']:.1e} (limit {f32['limit']:.1e})")
        return [*lines, "  verified: " + ("ok" if v["ok"] else "FAILED")]

    def _onnx_lines(self) -> list[str]:
        return [] if self.onnx is None else [f"  ONNX written to {self.onnx}"]


def optimize(
    model: nn.Module,
    example: torch.Tensor,
    passes: Sequence[str] | None = None,
    mode: str = DEFAULTS["optimize"]["mode"],
    verify: bool = True,
    seed: int = 0,
) -> tuple[fx.GraphModule, OptimizeReport]:
    """Trace ``model`` (left untouched), apply ``passes`` (the mode's lossless defaults when None) and, with
    ``verify``, compare against the original on ``example``: outputs; in train mode also every original
    parameter's gradient and the weights after one SGD step. Raises VerificationError beyond tolerance."""
    check_mode(mode)
    names = resolve(passes, mode)
    reference = copy.deepcopy(model).train(mode == "train")
    captured = capture(reference, example)
    if captured.graph_module is None:
        raise BranchgraphError(f"cannot optimise: {captured.note}")
    gm = captured.graph_module
    gm.train(mode == "train")
    optimised = run_passes(gm, names, mode, inplace=True)  # gm traces a copy of its own
    optimised.train(mode == "train")
    report = OptimizeReport(mode, reports(optimised), captured=captured.method)
    if verify:
        # The passes run again on a float64 copy: a pass that computes new weights (fold_bn) would otherwise
        # carry float32 rounding into the float64 equivalence check.
        reference64 = copy.deepcopy(model).double().train(mode == "train")
        gm64 = capture(reference64, example.double()).graph_module
        assert gm64 is not None  # the float32 copy traced, so this one does
        gm64.train(mode == "train")
        optimised64 = run_passes(gm64, names, mode, inplace=True).train(mode == "train")
        report.verification = verify_equal(model, optimised, example, mode, seed, "precision" in names,
                                           optimised64=optimised64)
        failures = report.verification.failures()
        if failures:
            raise VerificationError(f"passes {', '.join(names)} on {type(model).__name__}: {failures[0]}")
    return optimised, report
