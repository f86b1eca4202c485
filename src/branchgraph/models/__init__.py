"""Model zoo: Inception blocks, GoogLeNet variants and VGG16, built through ``create_model``."""

from branchgraph.models import branches, googlenet, revnet, vgg
from branchgraph.models.inception import ConvNormAct, Inception
from branchgraph.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    model_table,
    register_model,
)

__all__ = [
    "ConvNormAct", "Inception", "ModelInfo", "branches", "create_model", "googlenet", "list_models",
    "model_info", "model_table", "register_model", "revnet", "vgg",
]
