"""int8 inference: the data it is calibrated and judged on (``Calibration``), top-1 accuracy and the accuracy gate
(the quantisation itself: ``runtimes.quantize_openvino``). An int8 model cannot be checked against fp32 by a
numeric tolerance: it is accepted by its top-1 accuracy on held-out images (never the test split), within
``max_drop`` of fp32's."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError
from branchgraph.inference.runtimes import INSTALL

MAX_ACCURACY_DROP_POINTS = 0.3  # top-1 points int8 may lose against fp32 on the held-out split
MAX_ACCURACY_DROP = MAX_ACCURACY_DROP_POINTS / 100  # the same as a fraction
CALIBRATION_SIZE = 300
# An int8 model's main output against fp32's on held-out images, normwise, beyond which it is broken whatever its
# accuracy (a correct one is within a few percent): the gate counts right answers, this catches garbage logits.
INT8_OUTPUT_BOUND = 0.5
SANITY_IMAGES = 64  # held-out images that bound checks on (the first of the validation split)


@dataclass
class Calibration:
    """Images as the model takes them (preprocessed): ``images`` to calibrate int8 on (training images), ``val``
    held-out images and labels that accept or reject an int8 candidate, and optionally ``test`` (reported, never
    used to choose); ``max_drop``: the top-1 int8 may lose, as a fraction (0.003: 0.3 points). ``source`` says
    where they came from."""

    images: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None = None
    max_drop: float = MAX_ACCURACY_DROP
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop <= 1:
            raise ConfigError(f"max_accuracy_drop must be between 0 and 100 top-1 points; got {100 * self.max_drop:g}",
                              param="max_accuracy_drop")
        x, y = self.val
        if len(self.images) == 0 or len(x) == 0 or len(x) != len(y):
            raise ConfigError("calibration needs training images and held-out images with one label each",
                              param="calibration")

    def digest(self) -> str:
        """A hash of the images and labels (a cached int8 choice holds only for the data it was judged on)."""
        h = hashlib.sha256()
        for t in (self.images, *self.val):
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
        h.update(repr(self.max_drop).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "calibration_images": len(self.images), "validation_images": len(self.val[0]),
                "test_images": len(self.test[0]) if self.test else 0, "max_accuracy_drop": self.max_drop}


@torch.no_grad()
def top1(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    """The fraction of ``images`` whose largest logit is the label (the main output of ``net``)."""
    right = 0
    for start in range(0, len(images), batch):
        out = net(images[start:start + batch])
        logits = out[0] if isinstance(out, tuple) else out
        right += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return right / len(images)


def int8_available() -> str | None:
    """Why OpenVINO int8 cannot run here (a missing package), or None."""
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed: {INSTALL}" if missing else None


def accuracy_gate(net: nn.Module, calibration: Calibration, reference: float) -> tuple[float, str | None]:
    """``net``'s top-1 on the held-out images, and why it is rejected (more than ``max_drop`` below
    ``reference``, fp32's top-1 there), or None."""
    accuracy = top1(net, *calibration.val)
    drop = reference - accuracy
    if drop > calibration.max_drop + 1e-12:
        return accuracy, (f"top-1 {accuracy:.4f} on {len(calibration.val[0])} held-out images, {100 * drop:.2f} "
                          f"points below fp32's {reference:.4f} (more than {100 * calibration.max_drop:g})")
    return accuracy, None
