"""Shared fixtures: the real Fashion-MNIST folder, a tiny copy of it, and a CLI runner."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from branchgraph.data.fashion_mnist import FILES, resolve_data_dir
from branchgraph.memory import CheckpointPlan, step_memory
from tests import cli_fork

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tuning cache of the test session's own (the CLI subprocesses inherit it), never the user's."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["BRANCHGRAPH_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def quick_exact_plans() -> None:
    """The checkpoint planner's integer program gets 0.3 s instead of 2-30 s per solve, here and in the CLI
    subprocesses: tests check budgets, predictions and exactness, which hold for any plan it returns, not how close
    to optimal it is."""
    os.environ["BRANCHGRAPH_PLAN_SECONDS"] = "0.3"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The installed dataset; its absence is a set-up error (``make test`` installs it), not a skip."""
    path = resolve_data_dir()
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST missing in {path}: run 'make test' (it installs dataset-fashion-mnist)")
    return path


@pytest.fixture()
def data_copy(tmp_path: Path, data_dir: Path) -> Path:
    """A writable copy of the four real files, for corrupting."""
    target = tmp_path / "fmnist"
    target.mkdir()
    for images, labels, _ in FILES.values():
        for stem in (images, labels):
            shutil.copy(data_dir / f"{stem}.gz", target / f"{stem}.gz")
    return target


def gunzip(path: Path) -> bytes:
    """The decompressed bytes of a .gz file."""
    with gzip.open(path, "rb") as fh:
        return fh.read()


def gzip_write(path: Path, raw: bytes) -> None:
    """Write ``raw`` gzip-compressed (fast level, for tests)."""
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(raw)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as ``python -m branchgraph.cli ARGS`` would, in a fresh process (in ``cwd``, default the
    repository), and capture its output; the process is forked from one that imported the CLI already."""
    return cli_fork.run(list(args), {**os.environ, **(env or {})}, cwd or REPO, timeout)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--overwrite", action="store_true", help="rewrite golden files from the current output")


@pytest.fixture()
def golden(request: pytest.FixtureRequest):
    """``golden(name, text)``: compare with tests/golden/NAME, or write it under ``pytest --overwrite``."""

    def check(name: str, text: str) -> None:
        path = REPO / "tests" / "golden" / name
        if request.config.getoption("--overwrite"):
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            return
        assert path.is_file(), f"no golden file {path}; create it with 'pytest --overwrite'"
        assert text == path.read_text(), f"output differs from {path}; if intended, run 'pytest --overwrite'"

    return check


# Models whose layers repeat another model's (deeper twins, the stored twin): planned, but not measured again.
REPEATS = ("resnet110", "resnet164", "revnet110", "revinception-fmnist-plain")


def assert_kept_as_predicted(model: nn.Module, planned: nn.Module, p: CheckpointPlan,
                             x: torch.Tensor) -> None:
    """The bytes the plan saves agree with the allocator's (see above): within 3 % of plain, 32 KiB per region
    and the model's output."""
    plain, measured = step_memory(model, x).forward_bytes, step_memory(planned, x).forward_bytes
    assert measured is not None and plain is not None
    with torch.no_grad():
        output = model.train()(x)
    output_bytes = sum(t.untyped_storage().nbytes() for t in (output if isinstance(output, tuple) else (output,)))
    tolerance = 0.03 * p.plain_saved_bytes + 32 * 1024 * (len(p.regions) + 2) + output_bytes
    predicted_saving = p.plain_saved_bytes - p.saved_bytes
    assert abs((plain - measured) - predicted_saving) <= tolerance, (plain - measured, predicted_saving)
