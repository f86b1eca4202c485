"""What a run leaves beside its checkpoint: loss/accuracy curves (PNG), branch heatmaps and a markdown report;
and what ``train`` returns about it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from branchgraph.training.config import TrainConfig
from branchgraph.training.run_state import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    """Where a run lives and how it ended."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    config: TrainConfig
    tuning: dict[str, Any] | None = None  # what precision "auto" measured and chose (None: nothing measured)
    is_main: bool = True  # False on the other ranks of a torchrun job, which report nothing of their own

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "final": self.final, "epochs_done": len(self.metrics),
                "precision": self.config.precision, "channels_last": self.config.channels_last,
                "tuning": self.tuning}

    def to_text(self) -> str:
        """One line: the run, its epochs, final held-out accuracy, training time, precision and layout."""
        final = self.final
        split, accuracy = held_out_accuracy(final)
        return (f"run {self.run_dir}: {len(self.metrics)} epochs, {split} accuracy "
                f"{accuracy:.4f}, {final.get('elapsed_s', 0):.0f} s of training in "
                f"{self.config.precision}, {'channels_last' if self.config.channels_last else 'NCHW'}"
                + (f" (auto: {self.tuning['reason']})" if self.tuning else ""))

    def __str__(self) -> str:
        return self.to_text()


def held_out_accuracy(metrics: dict[str, Any]) -> tuple[str, float]:
    """(split, accuracy) of an epoch's record: the test split's, else the validation split's (data without a test
    split), else the training split's; NaN where none was measured."""
    for split in ("test", "val", "train"):
        if f"{split}_acc" in metrics:
            return split, float(metrics[f"{split}_acc"])
    return "test", float("nan")


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch for every split that was evaluated."""
    from matplotlib.figure import Figure  # here, not at import: matplotlib costs every CLI command 0.6 s
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in metrics]
    for split in SPLITS:
        if metrics and f"{split}_loss" in metrics[0]:
            label = f"{split} (as optimised: with label smoothing)" if split == "train" else split
            ax_loss.plot(epochs, [m[f"{split}_loss"] for m in metrics], marker="o", label=label)
            ax_acc.plot(epochs, [m[f"{split}_acc"] for m in metrics], marker="o", label=split)
    for ax, label in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


BRANCH_PANELS = (
    ("share", "share of the fork's input gradient (white: an equal share)", "RdBu_r", False),
    ("input_grad", "log10 |contribution to the fork's gradient|", "viridis", True),
    ("param_grad", "log10 |gradient of the branch's parameters|", "viridis", True),
    ("output_grad", "log10 |gradient at the branch's output|", "viridis", True),
)


def plot_branch_stats(records: list[dict[str, Any]], path: Path) -> None:
    """Heatmaps of the recorded branch statistics: one row per block x branch, one column per recorded step."""
    blocks = list(records[0]["blocks"])
    rows = [(b, br) for b in blocks for br in records[0]["blocks"][b]["branches"]]
    steps = [r["global_step"] for r in records]
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    first = records[0]["blocks"][blocks[0]]["branches"]
    panels = [p for p in BRANCH_PANELS if p[0] in next(iter(first.values()))]  # what the recorder measured
    edges = np.cumsum([len(records[0]["blocks"][b]["branches"]) for b in blocks])[:-1]
    fig = Figure(figsize=(5 * len(panels), 2 + 0.22 * len(rows)))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    for ax, (key, title, cmap, log) in zip(axes[0], panels, strict=True):
        data = np.array([[r["blocks"][b]["branches"][br][key] for r in records] for b, br in rows], dtype=float)
        if log:
            data = np.log10(np.where(data > 0, data, np.nan))
            image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
        else:
            even = 1 / len(first)
            norm = TwoSlopeNorm(even, vmin=min(-even, float(data.min())), vmax=max(1.0, float(data.max())))
            image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest", norm=norm)
        fig.colorbar(image, ax=ax, fraction=0.05)
        ax.set_title(title, fontsize=9)
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
        ax.set_xlabel("training step")
        for edge in edges:
            ax.axhline(edge - 0.5, color="white", linewidth=0.8)
    axes[0][0].set_yticks(range(len(rows)), [f"{b} {br}" for b, br in rows], fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def write_report(path: Path, config: dict[str, Any], metrics: list[dict[str, Any]], status: str) -> None:
    """A markdown summary: status, key settings, and one table row per epoch."""
    columns = ["epoch"] + [
        f"{split}_{kind}" for split in SPLITS for kind in ("loss", "acc") if metrics and f"{split}_{kind}" in metrics[0]
    ] + ["lr", "time_s", "images_per_s"]
    lines = [
        f"# Training run: {config['model']}",
        "",
        f"Status: {status}.",
        "",
        f"Settings (full list in `config.json`): model `{config['model']}`, {config['epochs']} epochs, "
        f"batch {config['batch_size']}, {config['optimizer']} lr {config['lr']} ({config['schedule']}), "
        f"precision {config['precision']}, channels_last {config['channels_last']}, "
        f"resize {config['resize'] or 'none'}, limit {config['limit'] or 'none'}, data "
        f"`{config.get('data', 'fashion-mnist')}`.",
        "",
    ]
    if metrics:
        last = metrics[-1]
        lines += [
            "Final {} accuracy: **{:.4f}** after {:.0f} s of training.".format(*held_out_accuracy(last),
                                                                               last["elapsed_s"]),
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for m in metrics:
            cells = [f"{m[c]:.4g}" if isinstance(m[c], float) else str(m[c]) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![curves](curves.png)", ""]
        if "branch_imbalance" in last:
            lines += [f"Branch statistics every {config['branch_stats']} steps: mean imbalance "
                      f"{last['branch_imbalance']:.2f}, worst block {last['branch_imbalance_max']:.2f} in the last "
                      "epoch (`branch_stats.jsonl`).", "", "![branch statistics](branch_stats.png)", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())


def metrics_csv(metrics: list[dict[str, Any]]) -> str:
    """The epochs' records as CSV: one column per figure, in the order they first appear."""
    import csv
    import io

    columns = list(dict.fromkeys(key for m in metrics for key in m))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    return out.getvalue()


def write_outputs(run_dir: Path, config: dict[str, Any], metrics: list[dict[str, Any]],
                  branch_records: list[dict[str, Any]] | None, status: str) -> None:
    """metrics.jsonl, metrics.csv, curves.png, report.md and (when recorded) branch_stats.jsonl/.png, each written
    atomically."""
    lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics)
    atomic_write_bytes(run_dir / "metrics.jsonl", lines.encode())
    atomic_write_bytes(run_dir / "metrics.csv", metrics_csv(metrics).encode())
    if metrics:
        plot_curves(metrics, run_dir / "curves.png")
    if branch_records is not None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in branch_records)
        atomic_write_bytes(run_dir / "branch_stats.jsonl", lines.encode())
        if branch_records:
            plot_branch_stats(branch_records, run_dir / "branch_stats.png")
    write_report(run_dir / "report.md", config, metrics, status)
