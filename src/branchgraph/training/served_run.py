"""A trained run as a model to optimise, time or deploy: its network with the weights it evaluated with (the EMA's
where it kept one), the input size it trained at, and its data, preprocessed as its evaluation does, as int8
calibration (training images to calibrate on, the validation split to judge by, the test split to report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.data import BatchLoader
from branchgraph.data.images import ImageData
from branchgraph.errors import BranchgraphError, DataError
from branchgraph.inference.int8 import CALIBRATION_SIZE, MAX_ACCURACY_DROP, Calibration
from branchgraph.models.registry import resolve_model
from branchgraph.training.config import TrainConfig
from branchgraph.training.data_source import training_data
from branchgraph.training.evaluation import load_trained
from branchgraph.training.run_state import CHECKPOINT_NAME, resolve_checkpoint
from branchgraph.training.setup import build_preprocess, input_size


def is_run(value: Any) -> bool:
    """Whether ``value`` names a run directory (one holding a training checkpoint)."""
    return isinstance(value, (str, Path)) and (Path(value) / CHECKPOINT_NAME).is_file()


def preprocessed(config: TrainConfig, data: ImageData, split: str, count: int | None = None, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of ``split`` (all by default; a seeded random choice otherwise) and their labels,
    preprocessed as the evaluation of a run with ``config`` does: what its model takes."""
    part = data.splits[split]
    if count is not None and count < len(part):
        part = part.subset(torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:count])
    loader = BatchLoader(part, 500, build_preprocess(config, False, data), train=False)
    xs, ys = zip(*loader.batches(), strict=True)
    return torch.cat(xs).float(), torch.cat(ys)


def make_calibration(config: TrainConfig, data: ImageData, source: str, count: int = CALIBRATION_SIZE,
                     max_drop: float = MAX_ACCURACY_DROP) -> Calibration:
    """``count`` training images to calibrate int8 on, the validation split to accept it by, and the test split
    (where the data has one) to report, preprocessed for a run with ``config``."""
    if "val" not in data.splits:
        raise DataError(f"{source} has no validation split to judge int8 by: give data with one", "calibration")
    test = preprocessed(config, data, "test") if "test" in data.splits else None
    return Calibration(preprocessed(config, data, "train", count)[0], preprocessed(config, data, "val"), test,
                       max_drop, source=source)


@dataclass
class TrainedRun:
    """A run loaded for inference: ``module`` in eval mode, its ``input_size`` (C, H, W) and its data."""

    run_dir: Path
    config: TrainConfig
    module: nn.Module
    input_size: tuple[int, int, int]
    data: ImageData

    @property
    def name(self) -> str:
        return f"{self.config.model} (run {self.run_dir.name})"

    def calibration(self, count: int = CALIBRATION_SIZE, max_drop: float = MAX_ACCURACY_DROP) -> Calibration:
        """The run's data as int8 calibration (``make_calibration``)."""
        return make_calibration(self.config, self.data, f"run {self.run_dir} ({self.config.data})", count, max_drop)


def load_run(run_dir: str | Path, model: str | None = None, trust_checkpoint: bool = False, data: Any = None
             ) -> TrainedRun:
    """The run in ``run_dir`` for inference (``model``, ``trust_checkpoint`` and ``data`` as for evaluating it:
    a checkpoint's model or data spec is imported only when named again or trusted)."""
    _, config, found, module = load_trained(run_dir, model, trust_checkpoint, data)
    return TrainedRun(resolve_checkpoint(run_dir).parent, config, module, input_size(config, found), found)


def resolve_any(model: nn.Module | str, input_size: tuple[int, ...] | None, model_kwargs: dict[str, Any] | None,
                seed: int, trust_checkpoint: bool = False
                ) -> tuple[str, nn.Module, tuple[int, ...], int | None, TrainedRun | None]:
    """``resolve_model``'s (name, module, input size, classes), and the run where ``model`` is a run directory."""
    if not is_run(model):
        return (*resolve_model(model, input_size, model_kwargs, seed), None)
    run = load_run(str(model), trust_checkpoint=trust_checkpoint)
    return run.name, run.module, run.input_size, len(run.data.classes), run


def calibration_for(calibration: Calibration | str | None, run: TrainedRun | None, size: tuple[int, ...],
                    count: int = CALIBRATION_SIZE, max_drop: float = MAX_ACCURACY_DROP) -> Calibration | None:
    """The int8 calibration data: as given, a data spec's images (preprocessed as training would, at ``size``), or
    the run's own; None where there is none."""
    if isinstance(calibration, Calibration):
        return calibration
    if calibration is not None:
        config = TrainConfig(data=str(calibration))
        try:
            found = training_data(config, None, None)
        except BranchgraphError as exc:  # the data's own message, naming the calibration parameter
            if exc.param != "data":
                raise
            raise type(exc)(str(exc).replace("data", "calibration data", 1), "calibration") from None
        c, h, w = found.image_size
        if c != size[0] or ((h, w) != tuple(size[1:]) and size[1] != size[2]):
            raise DataError(f"calibration data {calibration} has {c}x{h}x{w} images; the model takes "
                            f"{'x'.join(map(str, size))}", "calibration")
        config.resize = size[1] if (h, w) != tuple(size[1:]) else config.resize
        return make_calibration(config, found, f"data {calibration}", count, max_drop)
    return run.calibration(count, max_drop) if run is not None else None
