"""Evaluation: accuracy and loss over a loader (with mirrored test-time augmentation), and of a saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.choices import CONCRETE_PRECISIONS
from branchgraph.choices import precision as checked_precision
from branchgraph.data import BatchLoader
from branchgraph.data.images import ImageData
from branchgraph.errors import CheckpointError, ConfigError
from branchgraph.hardware import resolve_device
from branchgraph.training.config import TrainConfig
from branchgraph.training.data_source import training_data
from branchgraph.training.distributed import DistInfo, all_reduce_sum
from branchgraph.training.run_state import epochs_done, load_checkpoint, resolve_checkpoint, saved_config
from branchgraph.training.setup import autocast_for, build_model, build_preprocess, input_size, to_device


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, config: TrainConfig, device: torch.device, info: DistInfo
) -> tuple[float, float]:
    """Mean loss (without label smoothing) and accuracy over the loader, summed over all ranks; with
    ``config.tta_flip`` the logits are the mean of the image's and its mirror image's."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in loader.batches():
        x, y = to_device(x, y, device, config.channels_last)
        with autocast_for(config, device):
            logits = model(x)
            if config.tta_flip:
                logits = (logits.float() + model(x.flip(-1)).float()) / 2
        sums += torch.tensor([
            F.cross_entropy(logits.float(), y, reduction="sum").item(),
            (logits.argmax(1) == y).sum().item(),
            len(y),
        ], dtype=torch.float64)
    all_reduce_sum(sums, info)
    model.train(was_training)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def ema_weights(state: dict[str, Any]) -> dict[str, Any] | None:
    """The EMA model's weights in a checkpoint (what the run evaluated), keys as the plain model's."""
    ema = state.get("ema")
    if not ema or not isinstance(ema, dict):
        return None
    prefix = "module."
    return {k[len(prefix):]: v for k, v in ema.items() if isinstance(k, str) and k.startswith(prefix)}


def load_weights(model: nn.Module, state: dict[str, Any], name: str) -> None:
    """Load the weights a run evaluated (its EMA's where it kept one) into ``model``; CheckpointError when they
    are missing or do not fit."""
    try:
        model.load_state_dict(ema_weights(state) or state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint weights do not fit model {name}: {first[:200]}") from None


def load_trained(
    path: str | Path, model: str | None = None, trust_checkpoint: bool = False, data: Any = None,
    data_dir: str | None = None, limit: int | None = None,
) -> tuple[dict[str, Any], TrainConfig, ImageData, nn.Module]:
    """A saved run's checkpoint state, settings (``data_dir`` where given), data (the first ``limit`` samples of
    each split, by default the run's limit) and model with the weights it evaluated with, in eval mode. A run of a
    model or data spec (code) is rebuilt only when ``model``/``data`` names that spec again or ``trust_checkpoint``
    is set; ``data`` gives a run's datasets again where they were given in Python."""
    state = load_checkpoint(path)
    config = saved_config(state, resolve_checkpoint(path), model, trust_checkpoint,
                          data if isinstance(data, str) else None)
    if data_dir is not None:
        config.data_dir = data_dir
    found = training_data(config, data, limit)
    net = build_model(config, input_size(config, found), len(found.classes))
    load_weights(net, state, config.model)
    return state, config, found, net.eval()


def evaluate_checkpoint(
    path: str | Path, split: str = "test", data_dir: str | None = None, limit: int | None = None,
    precision: str | None = None, model: str | None = None, trust_checkpoint: bool = False, data: Any = None,
) -> dict[str, Any]:
    """Accuracy and loss of a saved run on ``split`` ('test', 'val' or 'train').

    By default the run's own ``limit`` and precision apply, so the figure matches its metrics; pass ``limit``
    or ``precision`` ('fp32', 'bf16', 'fp16') to change them (bf16 inference of an fp32-trained run, say). A run
    of a model spec (code) is only rebuilt when ``model`` names that spec again or ``trust_checkpoint`` is set;
    ``data`` names the run's data spec again, or gives its datasets where they were given in Python.
    """
    state, config, found, model = load_trained(path, model, trust_checkpoint, data, data_dir, limit)
    if precision is not None:
        config.precision = checked_precision(precision, CONCRETE_PRECISIONS).value
    splits = found.splits
    if split not in splits:
        raise ConfigError(f"split {split!r} does not exist for this run; choose one of: {', '.join(splits)}")
    device = resolve_device(config.device)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = BatchLoader(splits[split], 500, build_preprocess(config, False, found), train=False)
    loss, acc = evaluate(model, loader, config, device, DistInfo())
    return {"model": config.model, "split": split, "samples": len(splits[split]), "loss": loss, "accuracy": acc,
            "epochs_trained": epochs_done(state, path), "precision": config.precision}
