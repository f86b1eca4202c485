"""Networks written the way timm's families are (DenseNet, EfficientNet, Res2Net, SKNet: in-place activations,
BatchNorm+activation modules subclassing BatchNorm2d, squeeze-and-excitation gates, channel splits, attention
pooled to 1x1), through the CLI and the passes: plans that run, folded BatchNorm, forks inside modules, and
errors that name the real cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import fx, nn

from branchgraph.analysis import fork_gradients
from branchgraph.graph.tracing import capture
from branchgraph.passes import fold_bn, optimize
from branchgraph.passes.base import reports
from tests.conftest import run_cli
from tests.nets import BatchNormAct2d, DenseNetLike, EfficientNetLike, Res2NetLike, SKNetLike

NETS = "tests/nets.py"


def test_cli_memory_plan_of_a_densenet_with_in_place_activations_runs_and_is_verified() -> None:
    """The CLI's plan for a DenseNet-style net (norm-act with in-place ReLU on concatenated features) is
    returned only after its float64 training step gave the plain gradients; a plan that could not run was
    a traceback before."""
    r = run_cli("memory", f"{NETS}:DenseNetLike", "--input", "3,16,16", "--batch", "4", "--budget", "0.25",
                "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["plan"]
    assert result["regions"] and result["grad_change"] is not None and result["grad_change"] <= 1e-9
    assert result["saved_bytes"] <= result["budget_bytes"]
    text = run_cli("memory", f"{NETS}:EfficientNetLike", "--input", "3,16,16", "--batch", "4", "--budget", "0.25")
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert "verified: a float64 training step" in text.stdout


def test_summary_at_batch_1_names_the_batch_not_the_input_size() -> None:
    """Selective-kernel attention pools to 1x1 and normalises that with BatchNorm: at batch 1 in training mode
    there is one value per channel. The error names --batch and what to give instead; batch 2 works."""
    r = run_cli("summary", f"{NETS}:SKNetLike", "--input", "3,16,16", "--batch", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "--batch 1" in line and "sk1.bn" in line and "batch of 2 or more" in line
    assert "give an input size" not in line
    assert run_cli("summary", f"{NETS}:SKNetLike", "--input", "3,16,16", "--batch", "2").returncode == 0


def test_fold_bn_folds_a_batchnorm_subclass_with_an_activation_and_says_why_it_keeps_others() -> None:
    """A BatchNorm2d subclass that applies its activation (timm's BatchNormAct2d, traced to a functional
    batch_norm) is folded into the conv before it: no batch_norm call is left where a conv feeds it, its
    tensors are gone from the state dict, outputs equal the original's. DenseNet's pre-activation BatchNorms
    (after a concatenation) are kept, each named with the reason."""
    torch.manual_seed(0)
    model = EfficientNetLike().eval()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, BatchNormAct2d) for m in model.modules()) >= 5
    gm = fx.symbolic_trace(model)
    folded = fold_bn(gm)
    report = reports(folded)[-1]
    assert len(report.changed) == norms and not report.skipped, report
    assert not any(n.op == "call_function" and "batch_norm" in str(n.target) for n in folded.graph.nodes)
    assert not any(isinstance(m, nn.BatchNorm2d) and type(m) is nn.BatchNorm2d for m in folded.modules())
    assert not any(k.endswith(("running_mean", "running_var")) for k in folded.state_dict())
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert any(n.target is torch.nn.functional.batch_norm for n in gm.graph.nodes), "the pass must copy"

    dense = DenseNetLike().eval()
    report = reports(fold_bn(fx.symbolic_trace(dense)))[-1]
    pre_activation = [s for s in report.skipped if "pre-activation BatchNorm, before its conv" in s]
    assert len(pre_activation) == len(report.skipped) >= 6  # every layer's norm1, transitions, norm5
    assert any(s.startswith("kept blocks.0.0.norm1: pre-activation BatchNorm, before its conv (its input "
                            "concatenates more than conv outputs): ") for s in report.skipped)
    assert report.changed  # the stem's and each layer's norm2 follow a conv


class MixedConv(nn.Module):
    """MixNet's mixed depthwise conv (Tan & Le 2019): channel groups convolved with different kernels,
    concatenated, then one BatchNorm+activation over all of them."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels // 2, channels // 2, k, padding=k // 2, groups=channels // 2,
                                             bias=False) for k in (3, 5))
        self.bn = BatchNormAct2d(channels)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, [4, 4], 1)
        return self.head(self.bn(torch.cat([conv(pieces[i]) for i, conv in enumerate(self.convs)], 1)))


def test_fold_bn_folds_a_batchnorm_after_a_concatenation_of_convs_slice_by_slice() -> None:
    """A BatchNorm over the concatenated outputs of several convs folds each channel slice into its conv."""
    torch.manual_seed(0)
    model = MixedConv().eval()
    for name, buffer in model.bn.named_buffers():  # statistics that differ per channel
        if name.startswith("running"):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    folded = fold_bn(fx.symbolic_trace(model))
    assert reports(folded)[-1].changed == ["folded bn into convs.0, convs.1"]
    assert not any(n.op == "call_function" and "batch_norm" in str(n.target) for n in folded.graph.nodes)
    x = torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", [DenseNetLike, EfficientNetLike, Res2NetLike, SKNetLike])
def test_optimize_eval_verifies_on_the_families(net: type[nn.Module]) -> None:
    """The default eval passes (BatchNorm folding among them) on every family: verified against the original
    in float64 and float32 by ``optimize`` itself."""
    torch.manual_seed(0)
    _, report = optimize(net(), torch.randn(2, 3, 16, 16), mode="eval")
    assert report.ok, report.verification.failures() if report.verification else report
    folded = next(p for p in report.passes if p.name == "fold_bn")
    assert folded.changed


def test_squeeze_excite_gates_and_channel_splits_are_forks() -> None:
    """EfficientNet's SE gate multiplies the path it pooled (a fork inside the SE module) and Res2Net splits its
    channels into pieces added and concatenated: both are forks whose branches' gradients add up to the fork's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    se = fork_gradients(EfficientNetLike().double(), x)
    gates = [r for r in se if r.block.endswith(".se")]
    assert len(gates) == 3  # one per MBConv block, besides the residual join
    for r in se:
        assert r.sum_error < 1e-12 and sum(b.share for b in r.branches) == pytest.approx(1.0, abs=1e-9)
    res2 = fork_gradients(Res2NetLike().double(), x)
    splits = [r for r in res2 if any("split" in b.name for b in r.branches)]
    assert len(splits) == 2  # one per block
    for r in splits:
        assert [b.name.rsplit(".", 1)[1].split("[")[1] for b in r.branches] == ["0]", "1]", "2]", "-1]"]
        assert r.sum_error < 1e-12 and sum(b.share for b in r.branches) == pytest.approx(1.0, abs=1e-9)
        assert all(b.grad_norm > 0 for b in r.branches)


def test_elementwise_products_are_no_joins() -> None:
    """``x * sigmoid(x)`` (a hand-written SiLU) is arithmetic, not a gate of modules: no block."""

    class Swish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * torch.sigmoid(y)

    from branchgraph.graph.structure import find_blocks

    gm = capture(Swish(), torch.randn(1, 1, 8, 8)).graph_module
    assert gm is not None and find_blocks(gm) == []


def test_optimize_text_gives_kept_batchnorm_reasons_grouped_with_counts() -> None:
    """The text output (not only --json) says why BatchNorm layers were kept: one line per reason, with a count
    and the first few layers."""
    r = run_cli("optimize", f"{NETS}:DenseNetLike", "--input", "3,16,16", "--mode", "eval")
    assert r.returncode == 0, r.stderr
    data = json.loads(run_cli("optimize", f"{NETS}:DenseNetLike", "--input", "3,16,16", "--mode", "eval",
                              "--json").stdout)
    kept = next(p for p in data["passes"] if p["name"] == "fold_bn")["skipped"]
    line = next(line for line in r.stdout.splitlines() if "pre-activation BatchNorm, before its conv" in line)
    assert line.strip().startswith(f"skipped {len(kept)}: ") and "(kept blocks.0.0.norm1, " in line
