"""Networks written the way timm's families are, without timm, for the families the registry does not hold."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class RepVggBlock(nn.Module):
    """RepVGG's training-time block (Ding et al., 2021; timm's ``RepVggBlock``): a kxk conv+BN, a 1x1 conv+BN and,
    where shapes allow, a BatchNorm identity, summed, then ReLU. A strided block's 1x1 conv is a strided 1x1."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = conv_bn(cin, cout, 3, stride)
        self.conv_1x1 = conv_bn(cin, cout, 1, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)


class RepVggLike(nn.Module):
    """A small RepVGG: stages of RepVGG blocks, each stage's first block strided, then a linear head."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (16, 32),
                 depths: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_chans
        for width, depth in zip(widths, depths, strict=True):
            for i in range(depth):
                blocks.append(RepVggBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean((2, 3)))
