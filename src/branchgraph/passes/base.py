"""What every pass shares: copy-by-default and the report a pass leaves in ``gm.meta``."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx, nn

from branchgraph import choices
from branchgraph.graph.tracing import eliminate_dead_code

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

REPORTS_KEY = "branchgraph.pass_reports"


@dataclass
class PassReport:
    """What one pass changed (and what it left alone, and why)."""

    name: str
    nodes_before: int
    nodes_after: int = 0
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """What was left alone, grouped by why, the most frequent reason first. Entries read
        "<what>: <why>[: <detail>]"; each group lists "<what>" (with its detail in brackets)."""
        groups: dict[str, list[str]] = {}
        for entry in self.skipped:
            subject, _, rest = entry.partition(": ")
            reason, _, detail = rest.partition(": ")
            groups.setdefault(reason or subject, []).append(
                "" if not reason else f"{subject} [{detail}]" if detail else subject)
        return dict(sorted(groups.items(), key=lambda item: -len(item[1])))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def start(gm: fx.GraphModule, name: str, inplace: bool) -> tuple[fx.GraphModule, PassReport]:
    """The module to work on (a deep copy unless ``inplace``) and a fresh report."""
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"pass {name} takes a torch.fx.GraphModule, got {type(gm).__name__}")
    work = gm if inplace else copy.deepcopy(gm)
    return work, PassReport(name, len(work.graph.nodes))


def finish(gm: fx.GraphModule, report: PassReport) -> fx.GraphModule:
    """Recompile, count nodes and append the report to ``gm.meta``."""
    eliminate_dead_code(gm.graph)
    gm.delete_all_unused_submodules()
    gm.recompile()
    report.nodes_after = len(gm.graph.nodes)
    gm.meta.setdefault(REPORTS_KEY, []).append(report)
    return gm


def reports(gm: fx.GraphModule) -> list[PassReport]:
    """The reports of the passes that produced ``gm``, in order."""
    return list(gm.meta.get(REPORTS_KEY, []))


def check_mode(mode: str) -> None:
    """ConfigError unless ``mode`` is one of ``choices.MODES``."""
    choices.mode(mode)
