"""The heap policy: ``keep`` reuses freed tensor memory without page faults, the measured memory is the same under
either policy, and bad values are refused by name. Policies are process-wide, so each runs in a child process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from branchgraph.errors import ConfigError
from branchgraph.heap import CAN_KEEP, apply_heap_policy, heap_in_use
from branchgraph.training.config import TrainConfig
from tests.conftest import run_cli

CHILD = r"""
import json, resource, sys
import torch
from branchgraph.heap import apply_heap_policy
from branchgraph.memory import step_memory
from branchgraph.models import create_model

kept = apply_heap_policy(sys.argv[1])
torch.manual_seed(0)
model, x = create_model("googlenet-d2l"), torch.randn(16, 1, 96, 96)
measured = step_memory(model, x)  # first, while glibc's mmap threshold is still its starting 128 KiB
faults = []
for step in range(10):  # training steps: the same activations allocated and freed every step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x).sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[2:], "forward_bytes": measured.forward_bytes,
                  "peak_bytes": measured.peak_bytes}))
"""


def _child(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, policy], check=True, capture_output=True, text=True,
                         timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not CAN_KEEP or heap_in_use() is None, reason="needs glibc's mallopt and mallinfo2")
def test_keep_reuses_freed_memory_without_page_faults_and_measures_the_same_bytes() -> None:
    system, keep = _child("system"), _child("keep")
    assert keep["kept"] and not system["kept"]
    # After two warm-up steps: glibc maps and unmaps the large activations every step, the kept heap reuses them.
    # (The kept heap still grows now and then while glibc's free chunks settle, up to a tenth of system's faults in
    # a step beside other tests: the median of 8 steps, not every one.)
    assert statistics.median(keep["faults"]) < 0.1 * statistics.median(system["faults"]), (keep, system)
    # Bytes in use, mmap'd blocks (system) or heap blocks (keep) alike: the same measured memory.
    for key in ("forward_bytes", "peak_bytes"):
        assert abs(keep[key] - system[key]) <= 0.01 * system[key], (key, keep[key], system[key])


def test_bad_heap_policy_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="heap must be one of keep, system"):
        apply_heap_policy("jemalloc")
    with pytest.raises(ConfigError, match="heap must be one of"):
        TrainConfig(heap="big").validate()
    result = run_cli("memory", "googlenet-d2l", "--budget", "0.5", "--heap", "big")
    assert result.returncode == 2 and "--heap" in result.stderr and "Traceback" not in result.stderr
