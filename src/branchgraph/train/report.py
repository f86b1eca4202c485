"""What a run leaves beside its checkpoint: loss/accuracy curves (PNG) and a short markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from branchgraph.train.checkpoint import atomic_write_bytes

SPLITS = ("train", "val", "test")


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch for every split that was evaluated."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


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
        f"resize {config['resize'] or 28}, limit {config['limit'] or 'none'}.",
        "",
    ]
    if metrics:
        last = metrics[-1]
        lines += [
            f"Final test accuracy: **{last['test_acc']:.4f}** after {last['elapsed_s']:.0f} s of training.",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for m in metrics:
            cells = [f"{m[c]:.4g}" if isinstance(m[c], float) else str(m[c]) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![curves](curves.png)", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
