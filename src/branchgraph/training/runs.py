"""Starting and continuing runs: ``train`` a config in a new run directory, ``resume`` one from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branchgraph.errors import ConfigError
from branchgraph.training.config import TrainConfig
from branchgraph.training.report import TrainResult
from branchgraph.training.run_state import (
    CHECKPOINT_NAME,
    epochs_done,
    load_checkpoint,
    remove_stale_temporaries,
    saved_config,
)
from branchgraph.training.trainer import Trainer


def train(config: TrainConfig, run_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train ``config`` in a new run directory (or ``run_dir``)."""
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(config, run_dir, progress=progress).run()


def resume(run_dir: str | Path, progress: bool = True, epochs: int | None = None, heap: str | None = None,
           data_dir: str | None = None, model: str | None = None, trust_checkpoint: bool = False,
           data: Any = None) -> TrainResult:
    """Continue a run from its checkpoint with its saved settings (``epochs`` may extend it; ``heap`` and
    ``data_dir``, which do not change results, may differ); a run of a model or data spec needs ``model`` /
    ``data`` (that spec again) or ``trust_checkpoint``; one on datasets given in Python needs them as ``data``."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    config = saved_config(state, run_dir / CHECKPOINT_NAME, model, trust_checkpoint,
                          data if isinstance(data, str) else None)
    remove_stale_temporaries(run_dir)
    if heap is not None:
        config.heap = heap
    if data_dir is not None:
        config.data_dir = data_dir
    if epochs is not None:
        if epochs < epochs_done(state, run_dir):
            raise ConfigError(f"epochs {epochs} is fewer than the {state['epoch']} epochs already done", "epochs")
        config.epochs = epochs
    return Trainer(config, run_dir, state=state, progress=progress,
                   data=None if isinstance(data, str) else data).run()
