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
