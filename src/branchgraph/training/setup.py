"""What a training run is built from: device, autocast, loss, model, EMA update and preprocessing."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.analysis.branch_stats import BranchStats
from branchgraph.analysis.monitor import BranchMonitor
from branchgraph.data import Preprocess
from branchgraph.data.images import FASHION_MNIST, ImageData
from branchgraph.errors import ConfigError, raise_if_out_of_memory
from branchgraph.example import example_for
from branchgraph.memory import CheckpointPlan, plan
from branchgraph.models import create_model, model_info
from branchgraph.models.inception import Inception
from branchgraph.models.spec import check_fits, is_spec
from branchgraph.training.config import TrainConfig, check_lossy_precision
from branchgraph.training.distributed import DistInfo, broadcast_str
from branchgraph.tune import tune

AUX_WEIGHT = 0.3  # the paper's weight for GoogLeNet's auxiliary classifiers


def autocast_for(config: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """Autocast context for the configured precision (nothing for fp32)."""
    if config.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def compute_loss(output: Any, target: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and the main logits; GoogLeNet's auxiliary outputs add ``AUX_WEIGHT`` x their loss."""
    if isinstance(output, tuple):
        logits, *aux = output
        loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        for extra in aux:
            loss = loss + AUX_WEIGHT * F.cross_entropy(extra, target, label_smoothing=label_smoothing)
        return loss, logits
    return F.cross_entropy(output, target, label_smoothing=label_smoothing), output


def build_model(config: TrainConfig, size: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> nn.Module:
    """The configured model (registry name or spec), seeded so that initial weights depend only on
    ``config.seed``. A spec's model, or any model on data other than Fashion-MNIST, is first tried on a batch of
    ``size`` images: it must take it and give ``classes`` logits."""
    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_kwargs)
    if is_spec(config.model) or config.data != FASHION_MNIST:
        check_fits(model, config.model, size, classes)
    return model


def branch_recorder(model: nn.Module, size: tuple[int, int, int]) -> BranchStats | BranchMonitor:
    """What records per-branch gradient statistics during training: ``BranchStats`` on branchgraph's Inception
    blocks (with output gradients and gates), else a ``BranchMonitor`` on any model's forks, armed only for the
    recorded steps."""
    if any(isinstance(m, Inception) for m in model.modules()):
        return BranchStats(model)
    monitor = BranchMonitor(model, size)
    monitor.armed = False
    return monitor


def input_size(config: TrainConfig, data: ImageData) -> tuple[int, int, int]:
    """(channels, height, width) the model is given: the data's images, resized where the config says."""
    c, h, w = data.image_size
    return (c, config.resize, config.resize) if config.resize else (c, h, w)


def fit_to_data(config: TrainConfig, data: ImageData) -> TrainConfig:
    """The config with a registry model's ``in_channels`` and ``num_classes`` set from the data where they differ
    from the model's defaults and the settings give none (a spec's factory is the user's: it is checked, not set)."""
    if is_spec(config.model):
        return config
    params = inspect.signature(model_info(config.model).factory).parameters
    kwargs = dict(config.model_kwargs)
    for key, value in (("in_channels", data.image_size[0]), ("num_classes", len(data.classes))):
        if key in params and key not in kwargs and params[key].default != value:
            kwargs[key] = value
    return dataclasses.replace(config, model_kwargs=kwargs)


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """AveragedModel's update for an EMA whose decay warms up as (1 + n) / (10 + n) up to ``decay`` (timm's
    ModelEma warm-up): early averages follow the model instead of keeping the random initialisation."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        step = min(decay, (1 + float(n)) / (10 + float(n)))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - step)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
    return update


def build_preprocess(config: TrainConfig, train: bool, data: ImageData | None = None) -> Preprocess:
    """The preprocessing for training (with augmentation) or evaluation, normalising by the data's statistics."""
    stats = {} if data is None else {"mean": data.mean, "std": data.std}
    return Preprocess(
        **stats,
        resize=config.resize,
        normalize=config.normalize,
        crop_padding=config.crop_padding if train else 0,
        hflip=config.hflip and train,
        erase=config.random_erasing if train else 0.0,
    )


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) on ``device``, x in channels_last if asked."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def make_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov where asked and momentum > 0) or AdamW over the model's parameters."""
    if c.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                               nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)


def stretched_schedule(saved: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """A saved learning-rate schedule at its step, over the new run length (a resume with more epochs): the
    lengths of ``fresh`` (one-cycle's total steps and phases, cosine's period); the same run length is unchanged."""
    return saved | {key: fresh[key] for key in ("total_steps", "_schedule_phases", "T_max") if key in fresh}


def make_scheduler(optimizer: torch.optim.Optimizer, c: TrainConfig, total_steps: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (peak ``c.lr``), cosine or constant learning rate over ``total_steps``, stepped per batch."""
    if c.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=c.lr, total_steps=total_steps)
    if c.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def tune_precision(model: nn.Module, c: TrainConfig, device: torch.device, info: DistInfo,
                   size: tuple[int, int, int] = (1, 28, 28), classes: int = 10, steps: int | None = None
                   ) -> tuple[dict[str, Any] | None, TrainConfig]:
    """(what was measured, None on ranks other than 0; the config with precision and channels_last
    resolved): "auto" and None are settled by timing a few steps of each candidate on this machine (rank 0
    measures, the others take its choice); the global RNG is left as it was, so a cached choice and a fresh
    measurement train alike. A run of ``steps`` too few to repay the timing takes a cached choice or fp32."""
    precisions = None if c.precision == "auto" else (c.precision,)
    layouts = (False, True) if c.channels_last is None else (c.channels_last,)
    choice, tuning = "", None
    if info.is_main:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            example, target = example_for(size, c.batch_size // info.world_size, c.seed, classes, device=device)
            try:
                result = tune(model, example, target, "train", layouts=layouts, precisions=precisions, serves=steps)
            except RuntimeError as exc:
                raise_if_out_of_memory(exc, f" timing training steps of batch {example.shape[0]}")
                raise ConfigError(f"model {c.model} does not take {'x'.join(map(str, size))} images: "
                                  f"{str(exc).strip().splitlines()[0]}") from None
        tuning = result.to_dict() | {"text": result.to_text()}
        choice = json.dumps(tuning["chosen"])
    chosen = json.loads(broadcast_str(choice, info))
    return tuning, dataclasses.replace(c, precision=chosen["precision"], channels_last=chosen["channels_last"])


def plan_memory(model: nn.Module, c: TrainConfig, device: torch.device, info: DistInfo,
                size: tuple[int, int, int], tuned: bool) -> tuple[nn.Module, CheckpointPlan]:
    """The model (in place) set up to train under ``c.memory_budget`` and/or lossy saves, and the plan, made on one
    rank's batch; lossy saves under 16-bit training (``tuned``: the precision was chosen by timing) are refused."""
    check_lossy_precision(c, chosen=tuned)
    shape = (c.batch_size // info.world_size, *size)
    # lossy saves' float64 check needs more than zeros: normalised images' scale, from its own generator
    batch = (torch.zeros(shape) if c.memory_lossy is None
             else torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    example, _ = to_device(batch, torch.zeros(1), device, c.channels_last)
    return plan(model, example, c.memory_budget or 1.0, inplace=True, lossy_saves=c.memory_lossy)
