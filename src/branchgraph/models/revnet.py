"""RevNets (Gomez et al. 2017) and their ResNet twins, CIFAR-style; a reversible Inception network.

RevNet-38/110/164 and ResNet-32/110/164 follow the RevNet paper's Table 1: three stages, units 3-3-3 / 9-9-9
(RevNet) against 5-5-5 / 18-18-18 (ResNet), pre-activation residual functions (BN-ReLU-conv), basic or
bottleneck. A reversible unit is an additive coupling whose F and G are residual functions on half the channels.
The first unit of a stage that changes resolution or width cannot be inverted (it pools), so, as in the paper,
it is an ordinary unit whose activations are stored; every other unit keeps nothing for backward. ``units``
overrides the units per stage (the depth sweep), ``reversible=False`` gives the same network trained with
stored activations.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.memory.reversible import AdditiveCoupling, ReversibleSequence
from branchgraph.models.inception import ConvNormAct, Inception
from branchgraph.models.registry import register_model


def _bn_relu_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)]


def residual_function(cin: int, cout: int, stride: int = 1, bottleneck: bool = False) -> nn.Sequential:
    """Pre-activation residual function: two 3x3 convs, or a 1x1-3x3-1x1 bottleneck of width cout / 4."""
    if bottleneck:
        mid = cout // 4
        layers = [*_bn_relu_conv(cin, mid, 1), *_bn_relu_conv(mid, mid, 3, stride), *_bn_relu_conv(mid, cout, 1)]
    else:
        layers = [*_bn_relu_conv(cin, cout, 3, stride), *_bn_relu_conv(cout, cout, 3)]
    return nn.Sequential(*layers)


class Shortcut(nn.Module):
    """The parameter-free shortcut of a unit that changes shape: 2x2 average pooling, then zero channels."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class ResidualUnit(nn.Module):
    """y = shortcut(x) + F(x): a ResNet unit."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bottleneck: bool = False) -> None:
        super().__init__()
        self.shortcut = Shortcut(cin, cout, stride)
        self.residual = residual_function(cin, cout, stride, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class DownsamplingCoupling(nn.Module):
    """A RevNet stage's first unit: the coupling's shape as in the paper, y1 = s(x1) + F(x2), y2 = s(x2) + G(y1)
    with a pooling shortcut s, which makes it non-invertible; its activations are stored."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        self.shortcut = Shortcut(cin // 2, cout // 2, stride)
        self.f = residual_function(cin // 2, cout // 2, stride, bottleneck)
        self.g = residual_function(cout // 2, cout // 2, 1, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = self.shortcut(x1) + self.f(x2)
        y2 = self.shortcut(x2) + self.g(y1)
        return torch.cat((y1, y2), dim=1)


class CifarNet(nn.Sequential):
    """Stem conv 3x3, three stages (stride 1, 2, 2), BN-ReLU, global average pooling, linear classifier."""

    def __init__(self, stages: list[nn.Module], stem_channels: int, out_channels: int, in_channels: int,
                 num_classes: int) -> None:
        super().__init__(OrderedDict(
            stem=nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False),
            stage1=stages[0], stage2=stages[1], stage3=stages[2],
            head=nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            fc=nn.Linear(out_channels, num_classes),
        ))


def _out(channels: int, bottleneck: bool) -> int:
    return channels * 4 if bottleneck else channels


def _cifar_net(units: int, widths: tuple[int, int, int], bottleneck: bool, in_channels: int, num_classes: int,
               stage: Callable[[int, int, int], list[nn.Module]]) -> CifarNet:
    """Three stages (stride 1, 2, 2) of ``widths`` (x4 outputs if bottleneck); ``stage(cin, cout, stride)`` builds
    each stage's units."""
    if units < 1:
        raise ValueError(f"units per stage must be >= 1, got {units}")
    stages: list[nn.Module] = []
    cin = widths[0]
    for index, width in enumerate(widths):
        cout = _out(width, bottleneck)
        stages.append(nn.Sequential(*stage(cin, cout, 1 if index == 0 else 2)))
        cin = cout
    return CifarNet(stages, widths[0], cin, in_channels, num_classes)


def resnet(units: int, widths: tuple[int, int, int], bottleneck: bool, in_channels: int = 3,
           num_classes: int = 10) -> CifarNet:
    """A CIFAR ResNet: ``units`` residual units per stage of widths ``widths`` (x4 outputs if bottleneck)."""

    def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [ResidualUnit(cin, cout, stride, bottleneck),
                *(ResidualUnit(cout, cout, 1, bottleneck) for _ in range(units - 1))]

    return _cifar_net(units, widths, bottleneck, in_channels, num_classes, stage)


def revnet(units: int, widths: tuple[int, int, int], bottleneck: bool, in_channels: int = 3,
           num_classes: int = 10, reversible: bool = True) -> CifarNet:
    """A CIFAR RevNet: per stage, ``units`` couplings on ``widths`` channels (split in halves); a stage that
    changes shape starts with a stored (non-reversible) coupling."""

    def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
        half = cout // 2
        reshapes = cin != cout or stride != 1
        couplings = [AdditiveCoupling(residual_function(half, half, 1, bottleneck),
                                      residual_function(half, half, 1, bottleneck))
                     for _ in range(units - int(reshapes))]
        layers: list[nn.Module] = [DownsamplingCoupling(cin, cout, stride, bottleneck)] if reshapes else []
        if couplings:
            layers.append(ReversibleSequence(couplings, reversible))
        return layers

    return _cifar_net(units, widths, bottleneck, in_channels, num_classes, stage)


@register_model("resnet32", input_size=(3, 32, 32), num_classes=10)
def resnet32(in_channels: int = 3, num_classes: int = 10, units: int = 5) -> nn.Module:
    """ResNet-32 (CIFAR, 5-5-5 basic units, 16-32-64): RevNet-38's twin."""
    return resnet(units, (16, 32, 64), False, in_channels, num_classes)


@register_model("resnet110", input_size=(3, 32, 32), num_classes=10)
def resnet110(in_channels: int = 3, num_classes: int = 10, units: int = 18) -> nn.Module:
    """ResNet-110 (CIFAR, 18-18-18 basic units, 16-32-64): RevNet-110's twin."""
    return resnet(units, (16, 32, 64), False, in_channels, num_classes)


@register_model("resnet164", input_size=(3, 32, 32), num_classes=10)
def resnet164(in_channels: int = 3, num_classes: int = 10, units: int = 18) -> nn.Module:
    """ResNet-164 (CIFAR, 18-18-18 bottleneck units, 64-128-256 out): RevNet-164's twin."""
    return resnet(units, (16, 32, 64), True, in_channels, num_classes)


@register_model("revnet38", input_size=(3, 32, 32), num_classes=10)
def revnet38(in_channels: int = 3, num_classes: int = 10, units: int = 3, reversible: bool = True) -> nn.Module:
    """RevNet-38 (3-3-3 couplings, 32-64-112 channels): constant activation memory in depth."""
    return revnet(units, (32, 64, 112), False, in_channels, num_classes, reversible)


@register_model("revnet110", input_size=(3, 32, 32), num_classes=10)
def revnet110(in_channels: int = 3, num_classes: int = 10, units: int = 9, reversible: bool = True) -> nn.Module:
    """RevNet-110 (9-9-9 couplings, 32-64-128 channels)."""
    return revnet(units, (32, 64, 128), False, in_channels, num_classes, reversible)


@register_model("revnet164", input_size=(3, 32, 32), num_classes=10)
def revnet164(in_channels: int = 3, num_classes: int = 10, units: int = 9, reversible: bool = True) -> nn.Module:
    """RevNet-164 (9-9-9 bottleneck couplings, 128-256-512 out)."""
    return revnet(units, (32, 64, 128), True, in_channels, num_classes, reversible)


# Reversible Inception: F and G of each coupling are Inception blocks on half the channels (in == out).
# (half channels, c1, (c2 reduce, c2), (c3 reduce, c3), c4), googlenet-fmnist's quarter width, maps 14-7-4.
REV_INCEPTION_STAGES = (
    (2, (32, 8, (16, 16), (4, 4), 4)),
    (5, (64, 24, (12, 26), (4, 6), 8)),
    (2, (104, 32, (20, 40), (4, 16), 16)),
)


class RevInceptionNet(nn.Sequential):
    """GoogLeNet-shaped (stem, stages 3/4/5 of 2/5/2 blocks, max-pool between stages) from reversible Inception
    couplings; 1x1 convs widen the channels between stages (stored, like RevNet's downsampling units)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, reversible: bool = True) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(ConvNormAct(in_channels, 16, 3, padding=1, bn=True), ConvNormAct(16, 16, 1, bn=True),
                               ConvNormAct(16, 48, 3, padding=1, bn=True), nn.MaxPool2d(3, stride=2, padding=1)),
        )
        channels = 48
        for index, (count, (half, c1, c2, c3, c4)) in enumerate(REV_INCEPTION_STAGES):
            widen: list[nn.Module] = [] if index == 0 else [nn.MaxPool2d(3, stride=2, padding=1)]
            widen.append(ConvNormAct(channels, 2 * half, 1, bn=True))
            couplings = [AdditiveCoupling(Inception(half, c1, c2, c3, c4, bn=True, factorize="3x3"),
                                          Inception(half, c1, c2, c3, c4, bn=True, factorize="3x3"))
                         for _ in range(count)]
            layers[f"b{index + 3}"] = nn.Sequential(*widen, ReversibleSequence(couplings, reversible))
            channels = 2 * half
        # Couplings add post-ReLU (non-negative) Inception outputs, so activations drift up with depth:
        # normalise before pooling, as the pre-activation CIFAR nets do.
        layers["head"] = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        layers["fc"] = nn.Linear(channels, num_classes)
        super().__init__(layers)


@register_model("revinception-fmnist", input_size=(1, 28, 28), num_classes=10)
def revinception_fmnist(in_channels: int = 1, num_classes: int = 10, reversible: bool = True) -> nn.Module:
    """GoogLeNet-shaped net of reversible Inception couplings for 28x28 input (googlenet-fmnist's widths)."""
    return RevInceptionNet(in_channels, num_classes, reversible)


@register_model("revinception-fmnist-plain", input_size=(1, 28, 28), num_classes=10)
def revinception_fmnist_plain(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """revinception-fmnist's twin: the same network trained with stored activations."""
    return RevInceptionNet(in_channels, num_classes, reversible=False)
