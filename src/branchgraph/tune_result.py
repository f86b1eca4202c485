"""What tuning measured and chose (``TuneResult``: per candidate its median, spread, output error and compile
time, and why the choice won), and the report of an optimisation chosen by tuning (``TunedReport``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from branchgraph.candidates import Candidate
from branchgraph.passes.pipeline import OptimizeReport


@dataclass
class TuneResult:
    """What was measured (or read from the cache) and what was chosen, with the reason in words: per candidate
    its median, the spread of its rounds ((max - min) / median), its output error against fp32 eager (normwise),
    its compile time and, for int8, its top-1 accuracy on held-out images."""

    key: dict[str, Any]
    chosen: Candidate
    median_s: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    notes: list[str] = field(default_factory=list)
    spread: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    measured_at: str = ""
    untimed: str = ""  # why the choice was taken without timing the candidates (a run too short to repay it)
    accuracy: dict[str, float] = field(default_factory=dict)  # held-out top-1 of fp32 eager and int8 candidates

    @property
    def reason(self) -> str:
        """Why ``chosen`` won, in one sentence that says when it was measured."""
        if not self.median_s:
            return f"{self.chosen.name}: {self.untimed or 'the only candidate'}"
        best = self.median_s[self.chosen.name]
        worst_name = max(self.median_s, key=self.median_s.__getitem__)
        ratio = f" ({self.median_s[worst_name] / best:.2f}x {worst_name})" if worst_name != self.chosen.name else ""
        source = (f"cached, measured {self.measured_at}; --retune measures again" if self.cached
                  else f"measured {self.measured_at}")
        return (f"{self.chosen.name}: fastest whose outputs hold of {len(self.median_s)} candidates, "
                f"{1000 * best:.1f} ms per {self.key['mode']} step{ratio} ({source})")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": asdict(self.chosen) | {"name": self.chosen.name}, "reason": self.reason,
                "median_ms": {k: 1000 * v for k, v in self.median_s.items()}, "spread": self.spread,
                "output_error": self.errors, "compile_s": self.compile_s, "rejected": self.rejected,
                "left_out": self.left_out, "cached": self.cached, "measured_at": self.measured_at,
                "accuracy": self.accuracy, "notes": self.notes, "key": self.key}

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        lines = [f"tuned: {self.reason}"]
        width = max(map(len, [*self.median_s, *self.rejected, *self.left_out, ""]))
        for name, t in sorted(self.median_s.items(), key=lambda kv: kv[1]):
            extra = f"  rounds +-{self.spread[name] / 2:.0%}" if name in self.spread else ""
            extra += f"  error {self.errors[name]:.1e}" if name in self.errors else ""
            extra += f"  built in {self.compile_s[name]:.1f} s" if self.compile_s.get(name, 0) >= 0.05 else ""
            extra += f"  held-out top-1 {self.accuracy[name]:.4f}" if name in self.accuracy else ""
            extra += "  <- chosen" if name == self.chosen.name else ""
            lines.append(f"  {name:<{width}} {1000 * t:9.1f} ms{extra}")
        lines += [f"  {name:<{width}} rejected: {why}" for name, why in self.rejected.items()]
        lines += [f"  {name:<{width}} left out: {why}" for name, why in self.left_out.items()]
        if "fp32 eager" in self.accuracy:
            lines.append(f"  fp32 eager held-out top-1 {self.accuracy['fp32 eager']:.4f} (int8 is judged against it)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class TunedReport(OptimizeReport):
    """An optimisation chosen by tuning: the passes' report, the TuneResult that chose the passes, precision, layout
    and engine, and the ``record.json`` of the files written for deployment, when asked."""

    tuning: TuneResult | None = None
    deployed: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"tuning": self.tuning.to_dict() if self.tuning else None,
                                    "deployed": str(self.deployed) if self.deployed else None}

    def to_text(self, show: int = 3) -> str:
        """The tuning's timings, the passes of the chosen candidate, the verification and what was deployed."""
        tuned = [self.tuning.to_text()] if self.tuning else []
        return "\n".join([*self._captured_lines(), *tuned, *self._pass_lines(show), *self._verified_lines(),
                          *self._deployed_lines(), *self._onnx_lines()])

    def _deployed_lines(self) -> list[str]:
        if self.deployed is None:
            return []
        record = json.loads(self.deployed.read_text())
        error = record["verification"]["output_error_normwise"]
        return [f"  deployable {record['candidate']} written to {self.deployed.parent} ({', '.join(record['files'])})"
                f"; loaded back: outputs {error:.1e} off fp32 normwise",
                f"  serve it with branchgraph.inference.load('{self.deployed.parent}')"]
