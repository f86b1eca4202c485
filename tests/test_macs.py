"""Matrix products and attention in the MAC counts: checked against torch.utils.flop_counter on transformer
blocks, and the headline total against its own operator line."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import branchgraph as bg
from branchgraph.graph.operators import COUNTED, operator_macs
from tests.nets import Attention, VitLike


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_matrix_products_are_half_of_flop_counters_flops() -> None:
    """q.k^T, einsum and the Linear layers on 3-D token tensors, against FlopCounterMode (2 FLOPs per MAC)."""
    torch.manual_seed(0)
    for model, x in ((Attention(32, 4, fused=False), torch.randn(2, 10, 32)),
                     (VitLike(fused=False), torch.randn(2, 3, 16, 16))):
        ops = operator_macs(model, x)
        assert ops["matmul"] > 0 and ops["linear"] > 0
        assert 2 * (ops["conv"] + ops["linear"] + ops["matmul"]) == _flops(model, x)


def test_fused_attention_counts_what_the_written_out_one_does() -> None:
    """``F.scaled_dot_product_attention`` (a fused kernel the flop counter may not see) counts its two products,
    B*H*L*S*(E + Ev): the same as q.k^T and attention.v written out."""
    torch.manual_seed(0)
    fused, written = VitLike(fused=True), VitLike(fused=False)
    written.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16)
    a, b = operator_macs(fused, x), operator_macs(written, x)
    assert a["matmul"] == b["matmul"] == 2 * 2 * 4 * 17 * 17 * (8 + 8)  # 2 blocks, batch 2, 4 heads, 17 tokens
    assert a["conv"] == b["conv"] and a["linear"] == b["linear"]


def test_headline_total_is_the_operator_line_and_never_below_conv_linear_bias() -> None:
    s = bg.summary(VitLike(), (3, 16, 16), batch=2)
    ops, total = s.total["macs_by_operator"], s.total["forward_macs"]
    assert total == sum(ops[k] for k in COUNTED)
    assert total >= ops["conv"] + ops["linear"] + ops["bias"] + ops["matmul"] > s.total["macs"]
    text = s.to_text()
    assert "Forward MACs: " in text and f"({total:,}) = conv" in text and "matmul" in text
