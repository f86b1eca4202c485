"""The Inception block (Szegedy et al. 2015, as in d2l's GoogLeNet) with BatchNorm and factorised-5x5 options
(Szegedy et al. 2016)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Factorize = Literal["none", "3x3", "asym"]
FACTORIZE_CHOICES: tuple[str, ...] = ("none", "3x3", "asym")
BranchNorm = Literal["none", "batch", "layer"]
BRANCH_NORM_CHOICES: tuple[str, ...] = ("none", "batch", "layer")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels at each position of an N x C x H x W map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNormAct(nn.Sequential):
    """Conv2d, optional BatchNorm2d, ReLU; the conv has a bias only without BatchNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        bn: bool = False,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict({
            "conv": nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not bn)
        })
        if bn:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["relu"] = nn.ReLU()
        super().__init__(layers)


def _check_channels(block: str, **channels: int) -> None:
    for key, value in channels.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"Inception block {block!r}: {key} must be a positive integer, got {value!r}")


def _pair(block: str, key: str, value: Sequence[int]) -> tuple[int, int]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"Inception block {block!r}: {key} must be (reduce, out), got {value!r}")
    return int(value[0]), int(value[1])


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->5x5; 3x3 max-pool->1x1) joined by a channel concat.

    ``factorize`` replaces the 5x5 conv of branch 3 by two 3x3 convs ("3x3", Szegedy et al. 2016) or by a
    1x5 then a 5x1 conv ("asym"); both keep the 5x5 receptive field.

    ``branch_norm`` normalises each branch's output before the concat (BatchNorm, or LayerNorm over channels),
    a remedy proposed for unbalanced branch gradients. ``gates`` scales branch i by 4 * softmax(logits)_i, with
    learnable logits starting at 0: learnable branch weights that start as the plain block
    (every gate 1, where a bare softmax would shrink the output 4x) and keeping the gates' mean at 1.
    """

    def __init__(
        self,
        in_channels: int,
        c1: int,
        c2: Sequence[int],
        c3: Sequence[int],
        c4: int,
        *,
        bn: bool = False,
        factorize: Factorize = "none",
        branch_norm: BranchNorm = "none",
        gates: bool = False,
        name: str = "Inception",
    ) -> None:
        super().__init__()
        c2r, c2o = _pair(name, "c2", c2)
        c3r, c3o = _pair(name, "c3", c3)
        _check_channels(name, in_channels=in_channels, c1=c1, c2_reduce=c2r, c2=c2o,
                        c3_reduce=c3r, c3=c3o, c4=c4)
        if factorize not in FACTORIZE_CHOICES:
            raise ValueError(
                f"Inception block {name!r}: factorize must be one of {FACTORIZE_CHOICES}, got {factorize!r}"
            )
        self.in_channels = in_channels
        self.out_channels = c1 + c2o + c3o + c4
        self.branch1 = nn.Sequential(ConvNormAct(in_channels, c1, 1, bn=bn))
        self.branch2 = nn.Sequential(
            ConvNormAct(in_channels, c2r, 1, bn=bn), ConvNormAct(c2r, c2o, 3, padding=1, bn=bn)
        )
        if factorize == "none":
            wide: list[nn.Module] = [ConvNormAct(c3r, c3o, 5, padding=2, bn=bn)]
        elif factorize == "3x3":
            wide = [ConvNormAct(c3r, c3o, 3, padding=1, bn=bn), ConvNormAct(c3o, c3o, 3, padding=1, bn=bn)]
        else:
            wide = [
                ConvNormAct(c3r, c3o, (1, 5), padding=(0, 2), bn=bn),
                ConvNormAct(c3o, c3o, (5, 1), padding=(2, 0), bn=bn),
            ]
        self.branch3 = nn.Sequential(ConvNormAct(in_channels, c3r, 1, bn=bn), *wide)
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), ConvNormAct(in_channels, c4, 1, bn=bn)
        )
        if branch_norm not in BRANCH_NORM_CHOICES:
            raise ValueError(f"Inception block {name!r}: branch_norm must be one of {BRANCH_NORM_CHOICES}, "
                             f"got {branch_norm!r}")
        widths = (c1, c2o, c3o, c4)
        self.norms = None if branch_norm == "none" else nn.ModuleList(
            nn.BatchNorm2d(c) if branch_norm == "batch" else ChannelLayerNorm(c) for c in widths)
        self.gate_logits = nn.Parameter(torch.zeros(len(widths))) if gates else None

    def branches(self) -> list[tuple[str, nn.Module]]:
        """The four branches in concat order, by attribute name."""
        return [("branch1", self.branch1), ("branch2", self.branch2), ("branch3", self.branch3),
                ("branch4", self.branch4)]

    def gates(self) -> torch.Tensor:
        """The branch weights 4 * softmax(logits); the block must have ``gates``."""
        assert self.gate_logits is not None
        return len(self.branches()) * torch.softmax(self.gate_logits, dim=0)

    def gate_values(self) -> torch.Tensor:
        """The branch weights, detached, as float32 on the CPU (for reports)."""
        return self.gates().detach().float().cpu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for _, branch in self.branches()]
        if self.norms is not None:
            outs = [norm(out) for norm, out in zip(self.norms, outs, strict=True)]
        if self.gate_logits is not None:
            gates = self.gates()
            outs = [gates[i] * out for i, out in enumerate(outs)]
        return torch.cat(tuple(outs), dim=1)
