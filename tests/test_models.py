"""The model zoo: every registered model runs forward and backward; seed numbers; invalid configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph.errors import ConfigError
from branchgraph.models import Inception, model_info
from branchgraph.models.googlenet import GOOGLENET_STAGES
from tests.nets import model_input

ALL_MODELS = bg.list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = bg.create_model(name)
    out = model(model_input(name))
    if model_info(name).num_classes is not None:
        assert out.shape == (2, model_info(name).num_classes)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fx_traced_equals_eager(name: str) -> None:
    model = bg.create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = model_input(name, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "params"), [("googlenet-d2l", 5_977_530), ("vgg16", 138_357_544)])
def test_parameter_counts_of_the_seeds(name: str, params: int) -> None:
    assert sum(p.numel() for p in bg.create_model(name).parameters()) == params


def test_d2l_shape_table() -> None:
    """Seed 003's table: each top-level child's output at 1x96x96."""
    model = bg.create_model("googlenet-d2l")
    assert [n for n, _ in model.named_children()] == ["b1", "b2", "b3", "b4", "b5", "fc"]
    x = torch.rand(1, 1, 96, 96)
    shapes = []
    for child in model.children():
        x = child(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3), (1024,), (10,)]


def test_d2l_is_seed_003_exactly() -> None:
    model = bg.create_model("googlenet-d2l")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert sum(c.kernel_size == (5, 5) for c in convs) == 9  # one true 5x5 per Inception block
    first = model.b3[0]
    assert (first.branch1[0].conv.out_channels, first.branch2[1].conv.out_channels,
            first.branch3[1].conv.out_channels, first.branch4[1].conv.out_channels) == (64, 128, 32, 32)


def test_paper_googlenet_names_and_aux() -> None:
    model = bg.create_model("googlenet", aux_logits=True)
    names = [n for n, _ in model.named_children()]
    for expected in ("conv1", "conv2", "conv3", "inception3a", "inception4e", "inception5b", "fc"):
        assert expected in names
    model.train()
    out = model(torch.randn(2, 3, 224, 224))
    assert [t.shape for t in out] == [torch.Size([2, 1000])] * 3
    model.eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_bn_variants_have_batchnorm_and_no_conv_bias() -> None:
    for name in ("googlenet-bn", "googlenet-d2l-bn", "googlenet-fmnist"):
        model = bg.create_model(name)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == len(convs) and all(c.bias is None for c in convs), name


def test_28px_stem_keeps_spatial_maps() -> None:
    model = bg.create_model("googlenet-fmnist")
    x = torch.rand(1, 1, 28, 28)
    sizes = []
    for child in list(model.children())[:4]:
        x = child(x)
        sizes.append(x.shape[-1])
    assert sizes == [28, 14, 7, 4]


def test_factorised_branch_seed_002() -> None:
    """Seed 002: a 5x5 conv 64->64 has 102,400 weights, two 3x3 convs 64->64->64 have 73,728."""
    plain = Inception(64, 8, (8, 8), (64, 64), 8)
    fact = Inception(64, 8, (8, 8), (64, 64), 8, factorize="3x3")
    asym = Inception(64, 8, (8, 8), (64, 64), 8, factorize="asym")
    weights = lambda seq: sum(m.weight.numel() for m in seq.modules() if isinstance(m, nn.Conv2d))  # noqa: E731
    assert weights(plain.branch3[1:]) == 102_400
    assert weights(fact.branch3[1:]) == 73_728
    assert weights(asym.branch3[1:]) == 2 * 64 * 64 * 5
    x = torch.randn(1, 64, 9, 9)
    assert plain(x).shape == fact(x).shape == asym(x).shape == (1, 88, 9, 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(in_channels=64, c1=0, c2=(8, 8), c3=(8, 8), c4=8), "c1 must be a positive integer"),
        (dict(in_channels=64, c1=8, c2=(8, -1), c3=(8, 8), c4=8), "c2 must be a positive integer"),
        (dict(in_channels=64, c1=8, c2=(8,), c3=(8, 8), c4=8), r"c2 must be \(reduce, out\)"),
        (dict(in_channels=64, c1=8, c2=(8, 8), c3=(8, 8), c4=8, factorize="7x7"), "factorize must be one of"),
    ],
)
def test_invalid_inception_config_names_the_block(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        Inception(**kwargs, name="myblock")
    assert "'myblock'" in str(err.value)


def test_mismatched_in_channels_names_the_block() -> None:
    stages = [list(s) for s in GOOGLENET_STAGES]
    stages[1][2] = (500, *stages[1][2][1:])
    with pytest.raises(ConfigError, match=r"'b4\.2': in_channels 500 does not match the 512"):
        bg.create_model("googlenet-d2l", stages=stages)


def test_unknown_model_and_option() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet9'; choose one of"):
        bg.create_model("resnet9")
    with pytest.raises(ConfigError, match="takes no option depth"):
        bg.create_model("vgg16", depth=19)
    with pytest.raises(ConfigError, match="width must be > 0"):
        bg.create_model("googlenet-fmnist", width=0)
