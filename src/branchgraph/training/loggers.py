"""Where a run's figures go besides its own files: TensorBoard event files in the run directory (the ``tensorboard``
extra), one scalar per metric and epoch, and each branch's gradient share; and the early-stopping rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branchgraph.errors import ConfigError

INSTALL = "pip install 'branchgraph[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> None:
    """ConfigError in one line unless the tensorboard package is installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"log tensorboard needs the tensorboard package: {INSTALL}", "log")


class TensorBoardLog:
    """A ``torch.utils.tensorboard.SummaryWriter`` on the run directory; ConfigError in one line without the
    tensorboard package."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(f"log tensorboard needs the tensorboard package: {INSTALL}", "log") from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def epoch(self, record: dict[str, Any], branch_records: list[dict[str, Any]]) -> None:
        """The epoch's metrics (``train/loss``, ``val/acc``, ``lr``, ``images_per_s``...) and the mean share of
        each branch over the epoch's recorded steps (``branch_share/BLOCK/BRANCH``)."""
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                split, _, kind = key.partition("_")
                tag = f"{split}/{kind}" if split in ("train", "val", "test") and kind in ("loss", "acc") else key
                self.writer.add_scalar(tag, value, step)
        for (block, branch), share in _mean_shares(branch_records).items():
            self.writer.add_scalar(f"branch_share/{block}/{branch}", share, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _mean_shares(records: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Each branch's gradient share averaged over the recorded steps."""
    sums: dict[tuple[str, str], float] = {}
    for record in records:
        for block, stats in record["blocks"].items():
            for branch, values in stats["branches"].items():
                sums[block, branch] = sums.get((block, branch), 0.0) + values["share"]
    return {key: total / len(records) for key, total in sums.items()}


def stalled(metrics: list[dict[str, Any]], patience: int) -> bool:
    """Whether the validation accuracy of the last ``patience`` epochs is no better than the best before them."""
    accuracies = [m["val_acc"] for m in metrics if "val_acc" in m]
    if len(accuracies) <= patience:
        return False
    return max(accuracies[-patience:]) <= max(accuracies[:-patience])
