"""The top-level Python API for training runs: train a model on Fashion-MNIST or your data, resume a run,
evaluate its checkpoint, prune it. A run lives in its directory (checkpoint, metrics.csv, report, logs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # the training package is imported when an entry point is called (a light `import`)
    from branchgraph.training.config import TrainConfig
    from branchgraph.training.trainer import TrainResult


def train(model: nn.Module | str | TrainConfig | None = None, preset: str = "fast", *,
          config: str | Path | None = None, data: Any = None, run_dir: str | Path | None = None,
          progress: bool = True, **settings: Any) -> TrainResult:
    """Train a model, with a preset's settings, then those of a JSON file, then keyword settings.

    Args:
        model: a registry name or model spec (the run can be resumed); a module of your own (it cannot: the
            module is not in the checkpoint); a complete ``TrainConfig``; or None for the preset's model.
        preset: ``fast``, ``d2l``, ``sprint`` or ``accurate`` (``branchgraph.training.config.PRESETS``).
        config: a JSON file of settings, applied over the preset's.
        data: Fashion-MNIST by default; an image folder (``DIR/train/<class>/*.png``, ``val/``, ``test/``) or a
            ``pkg.mod:factory`` / ``file.py:factory`` returning ``(train, val[, test])``; or those datasets or
            DataLoaders themselves, read into memory. A registry model gets the data's channels and classes.
        run_dir: the run's directory (default a new dated one under the ``out_dir`` setting).
        progress: show a progress bar.
        **settings: any ``TrainConfig`` field: ``epochs=2``, ``limit=512``, ``precision="fp32"``, ``log=...``.

    Returns:
        The run: its directory, per-epoch metrics and settings; ``print`` shows the summary.
    """
    from branchgraph.training.config import TrainConfig, build_config
    from branchgraph.training.trainer import Trainer

    if isinstance(data, str):
        settings, data = {**settings, "data": data}, None
    if isinstance(model, TrainConfig):
        settings_of, module = model, None
    elif model is None or isinstance(model, str):
        named = {} if model is None else {"model": model}
        settings_of, module = build_config(preset, config, {**settings, **named}), None
    else:
        settings_of, module = build_config(preset, config, settings), model
    directory = None if run_dir is None else Path(run_dir)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return Trainer(settings_of, directory, progress=progress, model=module, data=data).run()


def resume(run_dir: str | Path, *, epochs: int | None = None, progress: bool = True, heap: str | None = None,
           data_dir: str | None = None, model: str | None = None, trust_checkpoint: bool = False,
           data: Any = None) -> TrainResult:
    """Continue a run from its checkpoint with its saved settings.

    Args:
        run_dir: the run's directory.
        epochs: a larger total extends the run (its learning-rate schedule stretched to the new length).
        progress: show a progress bar.
        heap, data_dir: where they differ from the run's (neither changes results).
        model: a run of a model spec needs that spec again (or ``trust_checkpoint``): a checkpoint's spec is
            never imported on its own.
        trust_checkpoint: import the model and data specs the checkpoint names.
        data: a run of a data spec needs it again (or ``trust_checkpoint``); one on datasets given in Python
            needs them again.

    Returns:
        The run, as ``train`` returns it.
    """
    from branchgraph.training.runs import resume as resume_run

    return resume_run(run_dir, progress=progress, epochs=epochs, heap=heap, data_dir=data_dir, model=model,
                      trust_checkpoint=trust_checkpoint, data=data)


def evaluate(run_dir: str | Path, split: str = "test", *, data_dir: str | None = None, limit: int | None = None,
             precision: str | None = None, model: str | None = None, trust_checkpoint: bool = False,
             data: Any = None) -> dict[str, Any]:
    """Accuracy and loss of a trained run's checkpoint on one split of its data.

    Args:
        run_dir: the run's directory.
        split: ``test``, ``val`` or ``train``.
        data_dir, limit, precision: where they differ from the run's.
        model, trust_checkpoint, data: as for ``resume``.

    Returns:
        ``accuracy``, ``loss`` and ``samples`` of the split, with the model, the epochs trained and the
        precision used.
    """
    from branchgraph.training.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(run_dir, split=split, data_dir=data_dir, limit=limit, precision=precision,
                               model=model, trust_checkpoint=trust_checkpoint, data=data)


def prune(run_dir: str | Path, amount: float = 0.5, epochs: int = 1, *, lr: float | None = None,
          progress: bool = True, model: str | None = None, trust_checkpoint: bool = False, data: Any = None
          ) -> dict[str, Any]:
    """Prune channels of a trained run by magnitude (lossy), then fine-tune; written beside the run.

    Args:
        run_dir: the run's directory.
        amount: the fraction of each prunable layer's channels removed.
        epochs: fine-tuning epochs.
        lr: fine-tuning's peak learning rate (default a quarter of the run's).
        progress: show a progress bar.
        model, trust_checkpoint, data: as for ``resume``.

    Returns:
        Held-out accuracy, parameters and MACs of the original, the pruned and the fine-tuned model, and the
        fine-tuning run's directory.
    """
    from branchgraph.training.prune_run import prune_and_finetune

    return prune_and_finetune(run_dir, amount, epochs, lr=lr, progress=progress, model=model,
                              trust_checkpoint=trust_checkpoint, data=data)
