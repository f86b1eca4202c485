"""VGG16 (configuration D, Simonyan & Zisserman 2015), laid out as in torchsummary's listing of it."""

from __future__ import annotations

import torch
from torch import nn

from branchgraph.models.registry import register_model

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class VGG(nn.Module):
    """Conv/ReLU/max-pool ``features`` and a three-layer ``classifier``, for 224x224 input."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)  # N x 512 x 7 x 7
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("vgg16", input_size=(3, 224, 224), num_classes=1000)
def vgg16(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    """VGG16 (138,357,544 parameters), as torchvision's without the adaptive pool."""
    return VGG(in_channels, num_classes)
