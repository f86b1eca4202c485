"""Training settings: a preset first, then explicit overrides; saved as JSON beside the results."""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from branchgraph.choices import PRECISIONS
from branchgraph.errors import ConfigError
from branchgraph.heap import HEAP_POLICIES
from branchgraph.memory.budget import parse_budget
from branchgraph.memory.lossy import LOSSY
from branchgraph.models import list_models, model_info
from branchgraph.models.spec import is_spec

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("tensorboard",)


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    model: str = "googlenet-fmnist"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.1
    resize: int | None = None
    normalize: bool = True
    crop_padding: int = 0
    hflip: bool = False
    random_erasing: float = 0.0  # probability per training image of erasing a random rectangle
    ema_decay: float | None = None  # evaluate (and save) an exponential moving average of the weights
    tta_flip: bool = False  # evaluate on each image and its mirror image, logits averaged
    val_size: int = 5000
    limit: int | None = None
    precision: str = "auto"  # "auto": timed on this machine (branchgraph.tune), resolved before training
    channels_last: bool | None = None  # None: timed with "auto" precision, else True
    memory_budget: str | None = None  # activation checkpointing under this budget (branchgraph.memory.plan)
    memory_lossy: str | None = None  # "bf16": saved activations kept in bfloat16 (lossy; branchgraph.memory.lossy)
    branch_stats: int | None = None  # record per-branch gradient statistics every this many steps
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    threads: int | None = None
    heap: str = "keep"  # "keep": freed tensor memory stays in the process for the next step (branchgraph.heap;
    # process-wide: train() from Python switches the calling process too)
    data: str = "fashion-mnist"  # or an image folder (DIR/train/<class>/...) or pkg.mod:factory / file.py:factory
    log: str | None = None  # "tensorboard": event files in the run directory (metrics.csv is always written)
    early_stop: int | None = None  # stop after this many epochs without a better validation accuracy
    data_dir: str | None = None
    out_dir: str = "runs"

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first invalid setting and its allowed values."""
        if not is_spec(self.model) and self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(list_models())}")
        if not is_spec(self.model) and model_info(self.model).num_classes is None:
            raise ConfigError(f"model {self.model!r} has no classifier head and cannot be trained on Fashion-MNIST")
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS, "device": DEVICES,
                   "heap": HEAP_POLICIES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}", key)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key} must be > 0; got {value}", key)
        if self.resize is not None and not 8 <= self.resize <= 512:
            raise ConfigError(f"resize must be between 8 and 512 pixels; got {self.resize}", "resize")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be a positive number of samples; got {self.limit}", "limit")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}", "label_smoothing")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(f"random_erasing must be a probability in [0, 1]; got {self.random_erasing}",
                              "random_erasing")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), e.g. 0.999; got {self.ema_decay}", "ema_decay")
        for key in ("momentum", "weight_decay"):
            if not 0 <= getattr(self, key) < float("inf"):
                raise ConfigError(f"{key} must be a finite number >= 0; got {getattr(self, key)}", key)
        for key in ("crop_padding", "val_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0; got {getattr(self, key)}", key)
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2^63); got {self.seed}", "seed")
        if self.threads is not None and not 0 < self.threads <= 4096:
            raise ConfigError(f"threads must be a positive number of threads; got {self.threads}", "threads")
        if self.memory_budget is not None:
            parse_budget(self.memory_budget)
        if self.memory_lossy is not None and self.memory_lossy not in LOSSY:
            raise ConfigError(f"memory_lossy must be one of {', '.join(LOSSY)}; got {self.memory_lossy!r}",
                              "memory_lossy")
        check_lossy_precision(self)
        if self.branch_stats is not None and not (isinstance(self.branch_stats, int) and self.branch_stats > 0):
            raise ConfigError(f"branch_stats must be a positive number of steps; got {self.branch_stats!r}",
                              "branch_stats")
        return self._check_logging()

    def _check_logging(self) -> TrainConfig:
        """The logger is one branchgraph writes; early stopping waits a positive number of epochs."""
        if self.log is not None and self.log not in LOGGERS:
            raise ConfigError(f"log must be one of {', '.join(LOGGERS)}; got {self.log!r}", "log")
        if self.early_stop is not None and self.early_stop <= 0:
            raise ConfigError(f"early_stop must be a positive number of epochs; got {self.early_stop}", "early_stop")
        return self

    def to_json(self) -> str:
        """The settings as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "settings") -> TrainConfig:
        """Build from a dict, rejecting unknown keys and values of the wrong type by name (all of them, in one
        line): settings read from a file or a checkpoint are data until they are checked."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: settings must be a JSON object, not {_described(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        hints = get_type_hints(cls)
        wrong = [key for key, value in data.items() if not _has_type(value, hints[key])]
        if wrong:
            listed = "; ".join(f"{key} must be {_type_name(hints[key])}, got {_described(data[key])}" for key in wrong)
            raise ConfigError(f"{source}: {listed}", wrong[0] if source == "settings" else None)  # a file has no flags
        return cls(**data)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a TrainConfig annotation (bool is not a number; an int is a float)."""
    if get_origin(hint) in (Union, types.UnionType):
        return any(_has_type(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if get_origin(hint) is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint)


TYPE_NAMES = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null"}


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in get_args(hint))
    return TYPE_NAMES.get(hint, "a JSON object")


def _described(value: Any) -> str:
    """A JSON value as the user wrote it, briefly."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    return json.dumps(value, default=str)[:40]


PRESETS: dict[str, dict[str, Any]] = {
    # d2l's GoogLeNet recipe exactly (Dive into Deep Learning, section 8.4): d2l.train_ch6 (plain SGD, lr 0.1,
    # 10 epochs, batch 128, resize 96, ToTensor without normalisation, Xavier init, test set evaluated each epoch).
    "d2l": dict(
        model="googlenet-d2l", epochs=10, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.0,
        nesterov=False, weight_decay=0.0, schedule="constant", label_smoothing=0.0, resize=96,
        normalize=False, crop_padding=0, hflip=False, val_size=0, precision="fp32", channels_last=False,
    ),
    # The default: >= 0.90 test accuracy in under 10 minutes on a 2-core CPU (README, Results).
    "fast": {},
    # 0.94 test accuracy in under 15 minutes on a 2-core CPU: the default net and schedule for 10 epochs with flips
    # and mirrored test-time augmentation; no EMA, which lags in so short a run (README, Results).
    "sprint": dict(epochs=10, hflip=True, tta_flip=True),
    # The best accuracy: the 28-px network at half width (4x the default's parameters), trained 50 epochs with
    # crop, flip and random erasing, an EMA of the weights and mirrored test-time augmentation (README, Results).
    "accurate": dict(model="googlenet-fmnist", model_kwargs={"width": 0.5}, epochs=50, crop_padding=2, hflip=True,
                     random_erasing=0.5, ema_decay=0.999, tta_flip=True),
}


def build_config(
    preset: str = "fast", config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset, then a JSON config file, then explicit overrides (``None`` values are ignored). A preset's
    ``model_kwargs`` are its model's: another model given without its own ``model_kwargs`` gets none."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    data: dict[str, Any] = asdict(TrainConfig())
    data.update(PRESETS[preset])
    later: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of settings")
        TrainConfig.from_dict(loaded, source=str(path))
        later.update(loaded)
    later.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if later.get("model", data["model"]) != data["model"] and "model_kwargs" not in later:
        data["model_kwargs"] = {}
    data.update(later)
    return TrainConfig.from_dict(data).validate()


def check_lossy_precision(config: TrainConfig, chosen: bool = False) -> None:
    """Lossy saves narrow float32 saves: refused under bf16/fp16 training (``chosen``: by precision auto), checked
    before any measurement where the precision is given."""
    if config.memory_lossy is not None and config.precision in ("bf16", "fp16"):
        how = " (chosen by precision auto)" if chosen else ""
        raise ConfigError(f"memory_lossy keeps float32 saves in bf16, but this run trains in {config.precision}{how}: "
                          "its saves are 16-bit already; train in precision fp32 to use it", "memory_lossy")
