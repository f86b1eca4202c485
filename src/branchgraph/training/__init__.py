"""Training on Fashion-MNIST: presets, the trainer, checkpoints, reports."""

from branchgraph.errors import Interrupted
from branchgraph.training.config import PRESETS, TrainConfig, build_config
from branchgraph.training.evaluation import evaluate_checkpoint
from branchgraph.training.runs import resume, train
from branchgraph.training.trainer import Trainer, TrainResult

__all__ = [
    "PRESETS", "Interrupted", "TrainConfig", "TrainResult", "Trainer", "build_config", "evaluate_checkpoint",
    "resume", "train",
]
