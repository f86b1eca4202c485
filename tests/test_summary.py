"""Summaries: golden tables, totals, seed numbers, hand-computed MACs, measured memory, bad input."""

from __future__ import annotations

import functools
import gc
import json
import math

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph import summary
from branchgraph.graph import heap_in_use
from branchgraph.graph.tables import Comparison, Summary
from tests.conftest import run_cli


@functools.cache
def _summary(name: str) -> Summary:
    """``summary(name)``, once per name and process: the tests that take it only read it."""
    return summary(name)


def _stable(text: str) -> str:
    """The printed summary without the measured peak line (it depends on the allocator's state)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("Peak of the training step")) + "\n"


@pytest.mark.parametrize("name", ["googlenet-d2l", "vgg16"])
def test_golden_summary(name: str, golden) -> None:
    golden(f"summary_{name}.out", _stable(_summary(name).to_text()))


def test_golden_compare_seed_002(golden) -> None:
    text = Comparison(summary("branch5x5"), summary("branch3x3x2")).to_text()
    golden("compare_branch5x5_branch3x3x2.out", text + "\n")


def test_vgg16_torchsummary_totals_are_seed_004s() -> None:
    t = _summary("vgg16").total
    assert t["params"] == 138_357_544
    assert [round(t[k], 2) for k in ("input_mb", "forward_backward_mb", "params_mb", "total_mb")] == [
        0.57, 218.59, 527.79, 746.96]


def test_seed_002_factorisation_numbers() -> None:
    rows = {r["key"]: r for r in Comparison(summary("branch5x5"), summary("branch3x3x2")).rows()}
    assert (rows["params_no_bias"]["a"], rows["params_no_bias"]["b"]) == (102_400, 73_728)
    assert rows["params_no_bias"]["ratio"] == pytest.approx(0.72)  # "28% fewer"
    assert (rows["macs"]["a"], rows["macs"]["b"]) == (224 * 224 * 64 * 64 * 25, 224 * 224 * 64 * 64 * 9 * 2)


@pytest.mark.parametrize("name", ["googlenet-d2l", "googlenet", "vgg16", "googlenet-fmnist"])
def test_rows_sum_to_totals(name: str) -> None:
    s = _summary(name)
    top = [r for r in s.rows if r.depth == 1]
    for key in ("params", "params_no_bias", "macs", "backward_macs", "saved_bytes"):
        assert sum(getattr(r, key) for r in top) == s.total[key], key
        assert sum(getattr(r, key) for r in s.rows if r.leaf) == s.total[key], key
    rows = {r.name: r for r in s.rows}
    for block in {b.block for b in s.branches}:
        branches = [b for b in s.branches if b.block == block]
        assert sum(b.params for b in branches) == rows[block].params
        assert sum(b.macs for b in branches) == rows[block].macs
        assert sum(b.macs_share for b in branches) == pytest.approx(1.0)


def _hand_macs(module: nn.Module, out_shape: list[int], in_shape: list[int]) -> int:
    n_out = math.prod(out_shape)
    if isinstance(module, nn.Conv2d):
        return n_out * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return n_out * module.in_features
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return n_out * k * k
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return math.prod(in_shape)
    raise AssertionError(type(module))


SAME_LAYERS = ("resnet110", "resnet164", "revnet110", "revinception-fmnist-plain")


# revnet164 (16 s, the only bottleneck net this test sees) and revinception-fmnist (12 s; its factorised BN Inception
# blocks' layer kinds are checked on googlenet-d2l-3x3/-bn, its couplings on revnet38) run in `make test-slow`.
@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.slow if m in ("revnet164", "revinception-fmnist") else ())
    for m in bg.list_models() if m not in SAME_LAYERS])
def test_params_and_macs_agree_with_hand_computation(name: str) -> None:
    """Every model but those whose layers another one repeats: of the deep CIFAR twins only revnet164 (the others
    are resnet32's and revnet38's units), and revinception-fmnist's stored twin."""
    s = _summary(name)
    model = bg.create_model(name)
    checked = 0
    for row in s.rows:
        module = model.get_submodule(row.name)
        if row.leaf and isinstance(module, nn.Conv2d | nn.Linear | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            assert row.params == sum(p.numel() for p in module.parameters()), row.name
            bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
            assert row.params_no_bias == row.params - bias, row.name
            in_shape = s.measurement.layers[row.name].input_shape
            assert row.macs == _hand_macs(module, row.output_shape, in_shape), row.name
            checked += 1
    assert checked > 0
    assert s.total["params"] == sum(p.numel() for p in model.parameters())


def test_hand_computed_layers_of_googlenet_d2l() -> None:
    rows = {r.name: r for r in _summary("googlenet-d2l").rows}
    assert rows["b1.0.conv"].macs == 64 * 48 * 48 * 1 * 7 * 7 == 7_225_344
    assert rows["b1.0.conv"].params == 64 * 49 + 64
    assert rows["b1.1"].macs == 64 * 24 * 24 * 9
    assert rows["b3.0.branch3.1.conv"].macs == 32 * 12 * 12 * 16 * 25
    assert rows["fc"].macs == 1024 * 10 and rows["fc"].backward_macs == 2 * 1024 * 10
    # The first conv's input needs no gradient: its backward is the weight gradient alone.
    assert rows["b1.0.conv"].backward_macs == rows["b1.0.conv"].macs


@pytest.mark.skipif(heap_in_use() is None, reason="needs glibc's mallinfo2 for the independent measurement")
def test_saved_bytes_match_an_independent_whole_step_measurement() -> None:
    """googlenet-d2l, batch 128, 96x96: hook-attributed saved bytes vs the heap held after forward."""
    s = summary("googlenet-d2l", batch=128)
    assert s.total["saved_bytes"] > 700 * 2**20  # ~780 MiB, the figure
    torch.manual_seed(0)
    model = bg.create_model("googlenet-d2l").train()
    x = torch.randn(128, 1, 96, 96)
    model(x[:2]).sum().backward()  # warm-up: oneDNN primitives, allocator pools
    model.zero_grad(set_to_none=True)
    gc.collect()
    before = heap_in_use()
    out = model(x)
    held = heap_in_use() - before - out.untyped_storage().nbytes()
    assert abs(s.total["saved_bytes"] - held) / held < 0.02, (s.total["saved_bytes"], held)
    assert s.peak_bytes >= s.total["saved_bytes"]


def test_summary_leaves_the_model_untouched() -> None:
    model = bg.create_model("googlenet-d2l-bn").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (1, 96, 96), batch=4)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class DataDependent(nn.Module):
    """A model torch.fx cannot trace: control flow on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.mean() > 10:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_falls_back_to_hooks() -> None:
    s = summary(DataDependent(), (3, 16, 16))
    assert s.note and "neither torch.fx" in s.note and "torch.export" in s.note
    assert s.branches == [] and s.total["params"] == 8 * 27 + 8 + 18
    assert {r.name for r in s.rows} == {"conv", "fc"}
    assert s.total["macs"] == 8 * 14 * 14 * 27 + 16
    with pytest.raises(bg.errors.BranchgraphError, match="cannot draw"):
        from branchgraph.graph.draw import draw

        draw(s, "/tmp/never.svg")


@pytest.mark.parametrize(
    ("args", "layer"),
    [(("vgg16", "--input", "3,32,32"), "'classifier.0' (Linear)"),
     (("googlenet-d2l", "--input", "3,96,96"), "'b1.0.conv' (Conv2d)")],
)
def test_input_the_model_cannot_take(args: tuple[str, ...], layer: str) -> None:
    result = run_cli("summary", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert layer in result.stderr


def test_summary_json_schema() -> None:
    result = run_cli("summary", "googlenet", "--depth", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["total"]) == {"params", "params_no_bias", "macs", "backward_macs", "saved_bytes", "input_mb",
                                  "forward_backward_mb", "params_mb", "total_mb", "macs_by_operator", "forward_macs"}
    by_operator = data["total"]["macs_by_operator"]
    assert by_operator["conv"] + by_operator["linear"] < data["total"]["macs"] < sum(by_operator.values())
    assert data["total"]["forward_macs"] == sum(v for k, v in by_operator.items() if k != "elementwise")
    assert by_operator["pool"] > 0 and by_operator["elementwise"] > 0
    names = [m["name"] for m in data["modules"]]
    assert names[:3] == ["conv1", "maxpool1", "conv2"] and "inception3a" in names and "inception5b" in names
    assert all(m["depth"] == 1 for m in data["modules"])
    assert {"name", "type", "depth", "output_shape", "params", "params_no_bias", "macs", "saved_bytes"} <= set(
        data["modules"][0])
    assert {b["block"] for b in data["branches"]} >= {"inception3a", "inception5b"}
