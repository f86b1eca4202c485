"""Verification of an optimised model against the original: float64 equivalence of outputs (and, in training,
gradients and weights after one SGD step) and float32 accuracy against the float64 truth, with the tolerances
and why they are what they are; and ``output_error``, the one measure of how far a served model's output is."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from branchgraph.errors import BranchgraphError
from branchgraph.graph.record import tensors
from branchgraph.kernels import to_channels_last
from branchgraph.passes.names import original_parameters

# The tolerances and why they are what they are: README, "Verification" (measurements on two processor classes).
EXACT_TOLERANCE = 1e-7  # float64, normwise per family: a correct pass shows 1e-12 or less, a wrong one 1e-3 or more
FP32_TOLERANCE = 1e-3  # float32 floor; otherwise FP32_SLACK x the original's own worst float32 error, measured
FP32_SLACK = 10.0
# The float32 variants of the original (name, channels_last, other thread count, ulp-perturbed); those after the
# first run only when the optimised model is outside the bound the first gives (more can only widen it).
FP32_VARIANTS: tuple[tuple[str, bool, bool, bool], ...] = (
    ("eager", False, False, False),
    ("channels_last, other threads", True, True, False),
    ("ulp-perturbed, other threads", False, True, True),
    ("ulp-perturbed, channels_last", True, False, True),
)
REDUCED_PRECISION_TOLERANCE = 0.1  # bf16/fp16: within this of eager torch.autocast's own error
SGD_LR = 0.1


class VerificationError(BranchgraphError):
    """The optimised model does not reproduce the original within tolerance."""


@dataclass
class Check:
    """Errors over a family of tensors (outputs, gradients or weights after a step): the worst per-tensor
    relative error, and the normwise relative error of the whole family, ||got - want|| / ||want||."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    norm_rel: float = 0.0
    _sq_diff: float = field(default=0.0, repr=False)
    _sq_want: float = field(default=0.0, repr=False)

    def add(self, name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        delta = got.double() - want.double()
        diff = delta.abs().max().item() if want.numel() else 0.0
        scale = want.double().abs().max().item() if want.numel() else 0.0
        rel = diff / scale if scale > 0 else diff
        self.max_abs = max(self.max_abs, diff)
        if rel >= self.max_rel:
            self.max_rel, self.worst = rel, name
        self._sq_diff += delta.square().sum().item()
        self._sq_want += want.double().square().sum().item()
        self.norm_rel = (self._sq_diff / self._sq_want) ** 0.5 if self._sq_want > 0 else self._sq_diff**0.5

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "worst": self.worst, "norm_rel": self.norm_rel}


@dataclass
class Verification:
    """float64 equivalence (optimised vs original) and float32 accuracy against the float64 truth: the
    optimised model's, and the original's under each float32 variant that was run (``FP32_VARIANTS``)."""

    exact: dict[str, Check] = field(default_factory=dict)
    fp32_original: dict[str, dict[str, Check]] = field(default_factory=dict)
    fp32_optimised: dict[str, Check] = field(default_factory=dict)
    reduced_precision: bool = False

    def original_error(self, family: str) -> float:
        """The original model's own float32 error for ``family``: the worst over the variants run."""
        return max(checks[family].norm_rel for checks in self.fp32_original.values())

    def limit(self, family: str) -> float:
        """The float32 error the optimised model may have for ``family``."""
        floor = REDUCED_PRECISION_TOLERANCE if self.reduced_precision else FP32_TOLERANCE
        return max(floor, FP32_SLACK * self.original_error(family))

    def failures(self) -> list[str]:
        out = [f"float64 {k} differ by {c.norm_rel:.2e} normwise (worst tensor {c.worst}) (> {EXACT_TOLERANCE:.0e})"
               for k, c in self.exact.items() if c.norm_rel > EXACT_TOLERANCE]
        out += [f"float32 {k} are {c.norm_rel:.2e} off the float64 truth, normwise (> {self.limit(k):.1e})"
                for k, c in self.fp32_optimised.items() if c.norm_rel > self.limit(k)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "float64_equivalence": {k: c.to_dict() for k, c in self.exact.items()},
            "float32_error_vs_float64": {
                k: {"original": self.original_error(k), "optimised": c.norm_rel, "limit": self.limit(k),
                    "original_variants": {v: checks[k].norm_rel for v, checks in self.fp32_original.items()}}
                for k, c in self.fp32_optimised.items()},
            "tolerances": {"float64_rel": EXACT_TOLERANCE, "float32_rel": FP32_TOLERANCE, "float32_slack": FP32_SLACK,
                           "reduced_precision_rel": REDUCED_PRECISION_TOLERANCE if self.reduced_precision else None},
            "ok": not self.failures(),
        }


@contextlib.contextmanager
def _threads(other: bool) -> Iterator[None]:
    """With ``other``, run on a different intra-op thread count (1, or 2 where there is only 1)."""
    before = torch.get_num_threads()
    if other:
        torch.set_num_threads(1 if before > 1 else 2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _perturb(net: nn.Module, example: torch.Tensor, seed: int) -> torch.Tensor:
    """Move every parameter and the input by about one float32 ulp (relative 2**-23 x a normal draw), in place
    for the parameters; the input comes back perturbed. A correct float32 run of either is equally right."""
    gen = torch.Generator().manual_seed(seed + 7)
    eps = torch.finfo(torch.float32).eps
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + eps * torch.randn(p.shape, generator=gen).to(p.dtype))
    return example * (1 + eps * torch.randn(example.shape, generator=gen).to(example.dtype))


def _fp32_variant(
    model: nn.Module, example: torch.Tensor, mode: str, seed: int, variant: tuple[str, bool, bool, bool],
    autocast: bool,
) -> dict[str, dict[str, torch.Tensor]]:
    """One float32 run of a copy of the original ``model`` under ``variant`` (see ``FP32_VARIANTS``)."""
    _, channels_last, other_threads, perturbed = variant
    net, x = copy.deepcopy(model).float(), example.float()
    if perturbed:
        x = _perturb(net, x, seed)
    if channels_last:
        net = to_channels_last(net) if mode == "train" else net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    with _threads(other_threads):
        return _step(net, x, mode, seed, autocast=autocast)


def _step(
    net: nn.Module, example: torch.Tensor, mode: str, seed: int, autocast: bool = False
) -> dict[str, dict[str, torch.Tensor]]:
    """Outputs; in train mode also every original parameter's gradient and its value after one SGD step.
    ``autocast`` runs the forward under ``torch.autocast`` (the eager counterpart of the precision pass); outputs
    come back in the example's dtype, so a float64 run stays float64 throughout."""
    net.train(mode == "train")
    context = torch.autocast(example.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    if mode == "eval":
        with torch.no_grad(), context:
            return {"outputs": {f"output {i}": o.to(example.dtype) for i, o in enumerate(tensors(net(example)))}}
    torch.manual_seed(seed)
    with context:
        outs = [o.to(example.dtype) for o in tensors(net(example))]
    torch.manual_seed(seed + 1)
    weights = [torch.randn(o.shape).to(o.dtype) for o in outs]
    sum((o * w).sum() for o, w in zip(outs, weights, strict=True)).backward()
    grads = {n: g for n, g in original_parameters(net, grad=True).items() if g is not None}
    torch.optim.SGD(net.parameters(), lr=SGD_LR).step()
    return {
        "outputs": {f"output {i}": o.detach() for i, o in enumerate(outs)},
        "gradients": {n: g.clone() for n, g in grads.items()},
        "weights_after_step": {n: p.detach().clone() for n, p in original_parameters(net).items()},
    }


def _compare(got: dict[str, dict[str, torch.Tensor]], want: dict[str, dict[str, torch.Tensor]]) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    for family, wanted in want.items():
        missing = sorted(set(wanted) - set(got[family]))
        if missing:
            raise VerificationError(f"the optimised model has no {family} for {', '.join(missing[:5])}")
        check = checks[family] = Check()
        for name, tensor in wanted.items():
            check.add(name, got[family][name], tensor)
    return checks


def verify_equal(
    model: nn.Module, optimised: nn.Module, example: torch.Tensor, mode: str, seed: int = 0,
    reduced_precision: bool = False, optimised64: nn.Module | None = None,
) -> Verification:
    """Run copies of the original and the optimised model in float64 (equivalence) and in float32
    (accuracy of each against the float64 original), on ``example``; the original's float32 variants run until
    the optimised model is within the bound or all have run. With ``reduced_precision`` the original's float32
    runs are under ``torch.autocast`` (bf16), the eager way to get what the precision pass gives.
    ``optimised64`` is the same passes applied to a float64 copy, run as it is (it takes the step); else a copy of
    ``optimised`` is cast to float64."""
    truth = _step(copy.deepcopy(model).double(), example.double(), mode, seed)
    result = Verification(reduced_precision=reduced_precision)
    exact = optimised64.double() if optimised64 is not None else copy.deepcopy(optimised).double()
    result.exact = _compare(_step(exact, example.double(), mode, seed), truth)
    result.fp32_optimised = _compare(_step(copy.deepcopy(optimised).float(), example.float(), mode, seed), truth)
    for variant in FP32_VARIANTS:
        run = _fp32_variant(model, example, mode, seed, variant, reduced_precision)
        result.fp32_original[variant[0]] = _compare(run, truth)
        if all(c.norm_rel <= result.limit(k) for k, c in result.fp32_optimised.items()):
            break
    return result


def main_output(out: Any) -> torch.Tensor:
    """A model's main output in float32 (the first of a tuple: GoogLeNet's auxiliary heads come after)."""
    return (out[0] if isinstance(out, tuple) else out).float()


def output_error(out: Any, reference: torch.Tensor) -> float:
    """How far a model's main output is from ``reference`` (eager fp32's): ||out - ref|| / ||ref||, normwise,
    the measure the tuner, deployment and benchmarks all report and hold to ``FP32_TOLERANCE`` or
    ``REDUCED_PRECISION_TOLERANCE``."""
    reference = main_output(reference)
    return ((main_output(out) - reference).norm() / reference.norm().clamp_min(1e-30)).item()
