"""Inputs too large for the machine are one out-of-memory line naming the size, never a traceback or a wrong-input
message; --input takes three numbers; --json failures are JSON on stdout."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from torch import nn

from branchgraph.errors import OutOfMemory, out_of_memory
from branchgraph.graph.tracing import layer_failure
from tests.conftest import REPO, run_cli

CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 12884901888 bytes. Error code 12 (Cannot allocate memory)")


def test_allocation_failures_are_recognised_and_name_the_size() -> None:
    assert "12.00 GiB" in str(out_of_memory(RuntimeError(CPU_ALLOCATOR)))
    assert "2.00 GiB" in str(out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")))
    assert "allocating memory failed" in str(out_of_memory(MemoryError()))
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")) is None


def test_a_layer_that_runs_out_of_memory_is_not_blamed_on_the_input_size() -> None:
    error = layer_failure(nn.Sequential(nn.Conv2d(3, 8, 3)), "0", (4, 3, 2048, 2048), RuntimeError(CPU_ALLOCATOR))
    assert isinstance(error, OutOfMemory) and "does not fit" not in str(error)
    assert "input [4, 3, 2048, 2048]" in str(error) and "lower the batch size" in str(error)


def _limited(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process whose address space is capped at 4 GiB."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run([sys.executable, "-m", "branchgraph.cli", *args], capture_output=True, text=True,
                          cwd=REPO, preexec_fn=cap, timeout=300)


@pytest.mark.parametrize("size", ["3,4096,4096 --batch 64", "1,2048,2048 --batch 8"])
def test_out_of_memory_is_one_line_with_exit_2(size: str) -> None:
    result = _limited("summary", "googlenet-fmnist", "--input", *size.split())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "out of memory" in result.stderr and "GiB failed" in result.stderr


def test_input_takes_three_numbers() -> None:
    result = run_cli("summary", "googlenet-fmnist", "--input", "1,28")
    assert result.returncode == 2 and "expected three numbers" in result.stderr


def test_json_failures_are_json_on_stdout() -> None:
    result = run_cli("train", "--lr", "0", "--json")
    assert result.returncode == 2 and json.loads(result.stdout) == {
        "error": "argument --lr: expected a positive number, got 0", "param": "--lr"}
    result = run_cli("summary", "no-such-model", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 2 and data["error"].startswith("unknown model 'no-such-model'")
    result = run_cli("train", "--resize", "4", "--json")
    assert json.loads(result.stdout)["param"] == "--resize" and result.returncode == 2
