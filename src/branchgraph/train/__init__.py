"""Training on Fashion-MNIST: presets, the trainer, checkpoints, reports."""

from branchgraph.errors import Interrupted
from branchgraph.train.config import PRESETS, TrainConfig, build_config
from branchgraph.train.evaluation import evaluate_checkpoint
from branchgraph.train.trainer import Trainer, TrainResult, resume, train

__all__ = [
    "PRESETS", "Interrupted", "TrainConfig", "TrainResult", "Trainer", "build_config", "evaluate_checkpoint",
    "resume", "train",
]
