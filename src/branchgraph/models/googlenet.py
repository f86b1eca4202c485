"""GoogLeNet: d2l's Fashion-MNIST version (Dive into Deep Learning, section 8.4), a 28-px variant, and the
paper's ImageNet net (Szegedy et al. 2015)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from branchgraph.models.inception import BranchNorm, ConvNormAct, Factorize, Inception
from branchgraph.models.registry import register_model

# (in_channels, c1, (c2_reduce, c2), (c3_reduce, c3), c4), the paper's Table 1 and d2l's.
BlockSpec = tuple[int, int, tuple[int, int], tuple[int, int], int]
GOOGLENET_STAGES: tuple[tuple[BlockSpec, ...], ...] = (
    (
        (192, 64, (96, 128), (16, 32), 32),
        (256, 128, (128, 192), (32, 96), 64),
    ),
    (
        (480, 192, (96, 208), (16, 48), 64),
        (512, 160, (112, 224), (24, 64), 64),
        (512, 128, (128, 256), (24, 64), 64),
        (512, 112, (144, 288), (32, 64), 64),
        (528, 256, (160, 320), (32, 128), 128),
    ),
    (
        (832, 256, (160, 320), (32, 128), 128),
        (832, 384, (192, 384), (48, 128), 128),
    ),
)
PAPER_NAMES: tuple[tuple[str, ...], ...] = (
    ("inception3a", "inception3b"),
    ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
    ("inception5a", "inception5b"),
)
Stem = Literal["d2l", "28px"]


def _scale(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of 8 (at least 8) unless width is 1."""
    if width == 1.0:
        return channels
    return max(8, round(channels * width / 8) * 8)


def _scaled_stages(
    stages: Sequence[Sequence[BlockSpec]], width: float
) -> list[list[BlockSpec]]:
    """The stage specs with every channel count scaled; in_channels follow the scaled outputs."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if width == 1.0:
        return [list(stage) for stage in stages]
    out: list[list[BlockSpec]] = []
    prev = _scale(stages[0][0][0], width)
    for stage in stages:
        scaled: list[BlockSpec] = []
        for _, c1, (c2r, c2), (c3r, c3), c4 in stage:
            spec = (prev, _scale(c1, width), (_scale(c2r, width), _scale(c2, width)),
                    (_scale(c3r, width), _scale(c3, width)), _scale(c4, width))
            scaled.append(spec)
            prev = spec[1] + spec[2][1] + spec[3][1] + spec[4]
        out.append(scaled)
    return out


def _inception_chain(
    specs: Sequence[BlockSpec], names: Sequence[str], in_channels: int, bn: bool, factorize: Factorize,
    **options: Any,
) -> tuple[list[tuple[str, Inception]], int]:
    """Build consecutive Inception blocks, checking each block's in_channels against what precedes it."""
    blocks: list[tuple[str, Inception]] = []
    for spec, name in zip(specs, names, strict=True):
        cin, c1, c2, c3, c4 = spec
        if cin != in_channels:
            raise ValueError(
                f"Inception block {name!r}: in_channels {cin} does not match the {in_channels} "
                "channels produced before it"
            )
        block = Inception(cin, c1, c2, c3, c4, bn=bn, factorize=factorize, name=name, **options)
        blocks.append((name, block))
        in_channels = block.out_channels
    return blocks, in_channels


def init_xavier(model: nn.Module) -> nn.Module:
    """d2l's ``train_ch6`` initialisation: Xavier-uniform weights for every Conv2d and Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    return model


class D2LGoogLeNet(nn.Sequential):
    """d2l's GoogLeNet: children b1..b5 and fc, run in order (an ``nn.Sequential``)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        bn: bool = False,
        factorize: Factorize = "none",
        stem: Stem = "d2l",
        width: float = 1.0,
        stages: Sequence[Sequence[BlockSpec]] = GOOGLENET_STAGES,
        branch_norm: BranchNorm = "none",
        gates: bool = False,
    ) -> None:
        if len(stages) != 3:
            raise ValueError(f"stages must list the 3 Inception stages b3, b4, b5; got {len(stages)}")
        specs = _scaled_stages(stages, width)
        c64, c192 = _scale(64, width), _scale(192, width)
        if stem == "d2l":
            b1 = nn.Sequential(
                ConvNormAct(in_channels, c64, 7, stride=2, padding=3, bn=bn),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "28px":
            b1 = nn.Sequential(ConvNormAct(in_channels, c64, 3, padding=1, bn=bn))
        else:
            raise ValueError(f"stem must be 'd2l' or '28px', got {stem!r}")
        b2 = nn.Sequential(
            ConvNormAct(c64, c64, 1, bn=bn),
            ConvNormAct(c64, c192, 3, padding=1, bn=bn),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        channels = c192
        stage_modules: list[nn.Sequential] = []
        for index, stage in enumerate(specs):
            names = [f"b{index + 3}.{i}" for i in range(len(stage))]
            blocks, channels = _inception_chain(stage, names, channels, bn, factorize,
                                                branch_norm=branch_norm, gates=gates)
            tail: list[nn.Module] = (
                [nn.MaxPool2d(3, stride=2, padding=1)] if index < 2
                else [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
            )
            stage_modules.append(nn.Sequential(*(b for _, b in blocks), *tail))
        super().__init__(OrderedDict(
            b1=b1, b2=b2, b3=stage_modules[0], b4=stage_modules[1], b5=stage_modules[2],
            fc=nn.Linear(channels, num_classes),
        ))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the pooled, flattened features."""
        for name in ("b1", "b2", "b3", "b4", "b5"):
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier on pooled features."""
        return self.fc(x)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier: 5x5/3 avg-pool, 1x1 conv 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, in_channels: int, num_classes: int, bn: bool) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = ConvNormAct(in_channels, 128, 1, bn=bn)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs of a GoogLeNet with auxiliary classifiers."""

    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


class GoogLeNet(nn.Module):
    """The paper's ImageNet GoogLeNet (Szegedy et al. 2014, Table 1), without LRN.

    With ``aux_logits`` it returns ``GoogLeNetOutputs`` in training mode (weight them 0.3 in the
    loss, as the paper does) and plain logits in eval mode.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        bn: bool = False,
        factorize: Factorize = "none",
        aux_logits: bool = False,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.conv1 = ConvNormAct(in_channels, 64, 7, stride=2, padding=3, bn=bn)  # N x 64 x 112 x 112
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)  # N x 64 x 56 x 56
        self.conv2 = ConvNormAct(64, 64, 1, bn=bn)
        self.conv3 = ConvNormAct(64, 192, 3, padding=1, bn=bn)  # N x 192 x 56 x 56
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)  # N x 192 x 28 x 28
        channels = 192
        for index, (stage, names) in enumerate(zip(GOOGLENET_STAGES, PAPER_NAMES, strict=True)):
            blocks, channels = _inception_chain(stage, names, channels, bn, factorize)
            for name, block in blocks:
                self.add_module(name, block)
            if index < 2:
                self.add_module(f"maxpool{index + 3}", nn.MaxPool2d(3, stride=2, padding=1))
        self.aux1 = InceptionAux(512, num_classes, bn) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, bn) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # N x 1024 x 1 x 1
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # N x 480 x 14 x 14
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits


@register_model("googlenet-d2l", input_size=(1, 96, 96), num_classes=10)
def googlenet_d2l(in_channels: int = 1, num_classes: int = 10, factorize: Factorize = "none",
                  stages: Sequence[Sequence[BlockSpec]] = GOOGLENET_STAGES) -> nn.Module:
    """GoogLeNet exactly as d2l's: 96x96 input, conv bias, true 5x5, no BN, Xavier init."""
    return init_xavier(D2LGoogLeNet(in_channels, num_classes, factorize=factorize, stages=stages))


@register_model("googlenet-d2l-bn", input_size=(1, 96, 96), num_classes=10)
def googlenet_d2l_bn(in_channels: int = 1, num_classes: int = 10, factorize: Factorize = "none",
                     width: float = 1.0, branch_norm: BranchNorm = "none", gates: bool = False) -> nn.Module:
    """d2l's GoogLeNet with BatchNorm after every conv (convs without bias)."""
    return D2LGoogLeNet(in_channels, num_classes, bn=True, factorize=factorize, width=width,
                        branch_norm=branch_norm, gates=gates)


@register_model("googlenet-d2l-3x3", input_size=(1, 96, 96), num_classes=10)
def googlenet_d2l_3x3(in_channels: int = 1, num_classes: int = 10, bn: bool = False) -> nn.Module:
    """d2l's GoogLeNet with each 5x5 conv factorised into two 3x3 convs (Szegedy et al. 2016)."""
    return init_xavier(D2LGoogLeNet(in_channels, num_classes, bn=bn, factorize="3x3"))


@register_model("googlenet-d2l-asym", input_size=(1, 96, 96), num_classes=10)
def googlenet_d2l_asym(in_channels: int = 1, num_classes: int = 10, bn: bool = False) -> nn.Module:
    """d2l's GoogLeNet with each 5x5 conv factorised asymmetrically into 1x5 then 5x1."""
    return init_xavier(D2LGoogLeNet(in_channels, num_classes, bn=bn, factorize="asym"))


@register_model("googlenet-fmnist", input_size=(1, 28, 28), num_classes=10)
def googlenet_fmnist(in_channels: int = 1, num_classes: int = 10, width: float = 0.25,
                     factorize: Factorize = "3x3", branch_norm: BranchNorm = "none", gates: bool = False) -> nn.Module:
    """GoogLeNet for native 28x28 input: 3x3 stem, BN, quarter width, 3x3-factorised; maps 28-14-7-4."""
    return D2LGoogLeNet(in_channels, num_classes, bn=True, factorize=factorize, stem="28px", width=width,
                        branch_norm=branch_norm, gates=gates)


@register_model("googlenet", input_size=(3, 224, 224), num_classes=1000)
def googlenet(in_channels: int = 3, num_classes: int = 1000, aux_logits: bool = False,
              factorize: Factorize = "none") -> nn.Module:
    """The paper's ImageNet GoogLeNet (Table 1 channels), optional auxiliary classifiers."""
    return GoogLeNet(in_channels, num_classes, aux_logits=aux_logits, factorize=factorize)


@register_model("googlenet-bn", input_size=(3, 224, 224), num_classes=1000)
def googlenet_bn(in_channels: int = 3, num_classes: int = 1000, aux_logits: bool = False,
                 factorize: Factorize = "none") -> nn.Module:
    """The paper's GoogLeNet with BatchNorm after every conv (Inception-v2 style normalisation)."""
    return GoogLeNet(in_channels, num_classes, bn=True, aux_logits=aux_logits, factorize=factorize)
