"""Single branches, to compare a 5x5 conv with its factorisation into two 3x3 convs (Szegedy et al. 2016)."""

from __future__ import annotations

from torch import nn

from branchgraph.models.registry import register_model


@register_model("branch5x5", input_size=(64, 224, 224), num_classes=None)
def branch5x5(in_channels: int = 64, out_channels: int = 64) -> nn.Module:
    """A 5x5 branch: one 5x5 conv (padding 2) and ReLU; 64->64 has 102,400 weights."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 5, padding=2), nn.ReLU())


@register_model("branch3x3x2", input_size=(64, 224, 224), num_classes=None)
def branch3x3x2(in_channels: int = 64, mid_channels: int = 64, out_channels: int = 64) -> nn.Module:
    """The factorised branch: two 3x3 convs with ReLUs; 64->64->64 has 73,728 weights."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(mid_channels, out_channels, 3, padding=1), nn.ReLU(),
    )
