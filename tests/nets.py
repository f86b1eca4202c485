"""Networks written the way outside code is, never through branchgraph's registry: the tests' foreign nets (and
the benchmarks', which import them from here).

Timm/torchvision-style families: ``InceptionV3Like`` has Inception-v3's layout (stem, 3xA, B, 4xC with 1x7/7x1, D,
2xE with split 1x3/3x1 branches) with its blocks as attributes called one after another in ``forward()``,
functional pools and ``torch.cat`` in between, in-place ReLUs, and no ``nn.Sequential`` anywhere (``width`` scales
every channel count); DenseNet, EfficientNet, Res2Net and SKNet look-alikes; RepVGG, ViT, zero-initialised
residuals, list-appending dense layers, shape checks and value-dependent branches; an Inception block written as
timm writes one. ``model_input`` is the tests' one random input for a registry model.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from branchgraph.models import model_info


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, w: float) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * w))  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, c(pool), kernel_size=1)
        self.out = c(64) + c(64) + c(96) + c(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, w: float) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * w))  # noqa: E731
        self.branch3x3 = BasicConv2d(cin, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out = c(384) + c(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, w: float) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * w))  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c(c7), kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c(c7), c(c7), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c(c7), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c(c7), kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c(c7), c(c7), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c(c7), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), kernel_size=1)
        self.out = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, w: float) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * w))  # noqa: E731
        self.branch3x3_1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out = c(320) + c(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, w: float) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * w))  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), kernel_size=1)
        self.out = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3Like(nn.Module):
    """Inception-v3's layout at ``width`` times its channels, for inputs of at least 75x75."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: max(1, int(n * width))  # noqa: E731
        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.Mixed_5b = InceptionA(c(192), 32, width)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out, 64, width)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out, 64, width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out, width)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out, 128, width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out, 160, width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out, 160, width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out, 192, width)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out, width)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out, width)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out, width)
        self.fc = nn.Linear(self.Mixed_7c.out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.dropout(x, 0.5, self.training))


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then its activation in one module, a ``BatchNorm2d`` subclass (timm's ``BatchNormAct2d``: the
    input's rank asserted, the functional batch norm, an identity where its dropout would be, then the activation
    in place)."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = act(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected a 4-D input, got {x.ndim}-D")
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum if self.momentum is not None else 0.0, self.eps)
        return self.act(self.drop(x))


class DenseLayer(nn.Module):
    """DenseNet's bottleneck layer: norm-act on the concatenated features (BN before its conv), in-place ReLUs."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = BatchNormAct2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.norm2(self.conv1(self.norm1(x))))


class DenseNetLike(nn.Module):
    """DenseNet-BC's layout (Huang et al. 2017) as timm writes it: each layer reads the concatenation of all
    earlier features, norm-act modules with in-place ReLUs, transitions of norm-act, 1x1 conv and average pool."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, growth: int = 8, layers: tuple[int, ...] = (3, 3),
                 ) -> None:
        super().__init__()
        width = 2 * growth
        self.conv0 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.norm0 = BatchNormAct2d(width)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, count in enumerate(layers):
            self.blocks.append(nn.ModuleList(DenseLayer(width + j * growth, growth) for j in range(count)))
            width += count * growth
            if i < len(layers) - 1:
                self.transitions.append(nn.ModuleDict({"norm": BatchNormAct2d(width),
                                                       "conv": nn.Conv2d(width, width // 2, 1, bias=False)}))
                width //= 2
        self.norm5 = BatchNormAct2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.norm0(self.conv0(x)), 3, 2, 1)
        for i, block in enumerate(self.blocks):
            features = [x]
            for layer in block:
                features.append(layer(features))
            x = torch.cat(features, 1)
            if i < len(self.transitions):
                t = self.transitions[i]
                x = F.avg_pool2d(t["conv"](t["norm"](x)), 2)
        x = self.norm5(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as timm writes it: the gate multiplies the path it was pooled from."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.act1(self.conv_reduce(x_se))
        return x * self.conv_expand(x_se).sigmoid()


class InvertedResidual(nn.Module):
    """EfficientNet's MBConv: 1x1 expansion, depthwise conv, SE gate, 1x1 projection, residual when shapes match;
    BN+SiLU modules with in-place SiLUs."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, nn.SiLU)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid, nn.SiLU)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.has_skip else x


class EfficientNetLike(nn.Module):
    """EfficientNet's layout (Tan & Le 2019) in small: a stem, MBConv stages with SE gates, a 1x1 head."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 16, 24)) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(widths[0], nn.SiLU)
        self.blocks = nn.Sequential(*(InvertedResidual(a, b, 2 if a != b else 1)
                                      for a, b in itertools.pairwise(widths)))
        self.conv_head = nn.Conv2d(widths[-1], 4 * widths[-1], 1, bias=False)
        self.bn2 = BatchNormAct2d(4 * widths[-1], nn.SiLU)
        self.classifier = nn.Linear(4 * widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        x = self.bn2(self.conv_head(x))
        return self.classifier(x.mean((2, 3)))


class Bottle2neck(nn.Module):
    """Res2Net's block (Gao et al. 2019) as timm writes it: the 1x1 conv's output split into ``scale`` channel
    groups, each group's 3x3 conv reading the previous group's output added to its own split."""

    def __init__(self, channels: int, width: int = 4, scale: int = 4) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(channels, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            spo.append(sp)
        spo.append(spx[-1])
        out = self.bn3(self.conv3(torch.cat(spo, 1)))
        out += shortcut
        return self.relu(out)


class Res2NetLike(nn.Module):
    """A stem and Res2Net blocks with in-place residual additions and ReLUs."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, channels: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*(Bottle2neck(channels) for _ in range(blocks)))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.act1(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class SelectiveKernel(nn.Module):
    """SKNet's selective-kernel conv (Li et al. 2019): two paths of different receptive field, weighted per
    channel by an attention that pools their sum to 1x1 and runs it through conv, BatchNorm and ReLU."""

    def __init__(self, channels: int, reduced: int = 8) -> None:
        super().__init__()
        self.paths = nn.ModuleList(nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True)) for d in (1, 2))
        self.fc_reduce = nn.Conv2d(channels, reduced, 1, bias=False)
        self.bn = nn.BatchNorm2d(reduced)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(reduced, channels * 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = torch.stack([path(x) for path in self.paths], 1)  # N x 2 x C x H x W
        attn = self.act(self.bn(self.fc_reduce(paths.sum(1).mean((2, 3), keepdim=True))))  # N x r x 1 x 1
        attn = self.fc_select(attn).view(x.shape[0], 2, -1, 1, 1).softmax(1)
        return (paths * attn).sum(1)


class SKNetLike(nn.Module):
    """A stem, two selective-kernel blocks with residuals, and a classifier."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        self.sk1 = SelectiveKernel(channels)
        self.sk2 = SelectiveKernel(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.sk1(x) + x
        x = self.sk2(x) + x
        return self.fc(x.mean((2, 3)))


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


class Attention(nn.Module):
    """timm's ``Attention``: one qkv Linear on a token tensor, heads, scaled dot-product attention (the fused
    ``F.scaled_dot_product_attention``, or q.k^T, softmax and attention.v written out), then a projection."""

    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            x = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            x = torch.einsum("bhnm,bhmd->bhnd", attn.softmax(dim=-1), v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (timm's ``Block``): x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitLike(nn.Module):
    """A small ViT (Dosovitskiy et al., 2021; timm's ``VisionTransformer``): conv patch embedding, a class token,
    position embeddings, transformer blocks, the class token's head."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, dim: int = 32, depth: int = 2, heads: int = 4,
                 patch: int = 4, image: int = 16, fused: bool = True) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class ZeroInitResidual(nn.Module):
    """A residual block whose branch forks in two and ends in a BatchNorm with zero weight (timm's
    ``zero_init_last``, as in ResNeSt): at initialisation no gradient reaches the inner fork."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.a, self.b = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv(x)
        x = torch.relu(x + self.bn(self.a(y) + self.b(y)))
        return self.head(x.mean((2, 3)))


class DenseListLayer(nn.Module):
    """DenseNet's layer as timm calls it: ``layer(features)`` with the list of all earlier features, which the
    caller appends this layer's output to afterwards; norm-act with an in-place ReLU before the conv."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.act(self.norm(torch.cat(features, 1))))


class ShapeBranchingDenseNet(nn.Module):
    """A dense block of ``DenseListLayer``s behind Python control flow on the input's size (as EfficientViT and
    MobileViT have), so torch.fx's symbolic tracer cannot take it."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, growth: int = 8, layers: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 2 * growth, 3, padding=1)
        self.layers = nn.ModuleList(DenseListLayer(2 * growth + i * growth, growth) for i in range(layers))
        self.head = nn.Linear(2 * growth + layers * growth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.shape[-1] % 2:  # odd maps are padded to even ones
            x = nn.functional.pad(x, (0, 1, 0, 1))
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return self.head(torch.cat(features, 1).mean((2, 3)))


class CheckedConvBn(nn.Module):
    """A conv+BN that checks its input's rank first, as timm's layers do (``_assert(x.ndim == 4)``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected a 4-D input, got {x.ndim}-D")
        return self.bn(self.conv(x))


class CheckedNet(nn.Module):
    """A chain of rank-checked conv+BN layers and a residual: one real fork, and shape checks everywhere."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = CheckedConvBn(in_chans, width)
        self.a, self.b = CheckedConvBn(width, width), CheckedConvBn(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        torch._assert(height == width, "expected a square image")
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.head(x.mean((2, 3))).reshape(batch, -1)


class ValueBranchingNet(nn.Module):
    """Python control flow on a tensor's values: neither torch.fx's symbolic tracer nor torch.export can capture
    it (only module hooks can measure it)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.mean() > 0:
            x = x.relu()
        return self.head(x.mean((2, 3)))


class TimmStyleInception(nn.Module):
    """An Inception block and head written the way timm writes them: attributes called in ``forward()``,
    functional pooling and concatenation, no nn.Sequential."""

    def __init__(self, channels: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.branch1x1 = nn.Conv2d(channels, channels, 1)
        self.branch3x3_1 = nn.Conv2d(channels, channels, 1)
        self.branch3x3_2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.branch_pool = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(3 * channels)
        self.fc = nn.Linear(3 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        branches = [self.branch1x1(x), self.branch3x3_2(F.relu(self.branch3x3_1(x))),
                    self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))]
        x = F.relu(self.bn(torch.cat(branches, 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TwoBranchNet(nn.Module):
    """A user's small two-branch classifier (3x3 and 5x5 convolutions side by side, concatenated), for any number
    of input channels and classes."""

    def __init__(self, in_chans: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(in_chans, 8, 5, padding=2), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


# Small inputs the registry models accept (vgg16's classifier needs 224x224): every layer still runs, in a fraction
# of the time.
SMALL_SIZES = {"vgg16": (3, 224, 224), "branch5x5": (64, 12, 12), "branch3x3x2": (64, 12, 12)}


def small_size(name: str) -> tuple[int, ...]:
    """A small input size registry model ``name`` accepts: its own where it is 32 px or less (halved), else 48 px."""
    c, h, _ = model_info(name).input_size
    side = min(h, 48) if h > 32 else h // 2
    return SMALL_SIZES.get(name, (c, side, side))


def model_input(name: str, batch: int = 2, seed: int = 0, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """A seeded random batch for registry model ``name`` at ``size`` (default: the registry's input size)."""
    torch.manual_seed(seed)
    return torch.randn(batch, *(size or model_info(name).input_size))


def timm_style_data(batch: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 1-channel batch and 10-class targets for ``TimmStyleInception``."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
