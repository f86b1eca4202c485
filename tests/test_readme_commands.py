"""The README's command-line tour runs as written, at small sizes: each line's model gets a small input, batches,
rounds and epochs shrink, compilation is left out (the memory line keeps its batch: its peak budget is only
reachable where activations dominate), and the example run directories are the one the tour's own ``train`` line
made. Slow (a few minutes): ``make test-slow``; the default suite parses every documented line."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli

SMALL_INPUT = {"googlenet-d2l": "1,48,48"}
FAST_TRAIN = ["--epochs", "1", "--limit", "64", "--batch-size", "16", "--precision", "fp32", "--no-channels-last",
              "--quiet", "--out-dir", "runs"]
NET = """import torch
from torch import nn


def make() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
"""


def _tour() -> list[list[str]]:
    block = re.search(r"## A CLI tour.*?```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert block, "the README has a CLI tour"
    return [shlex.split(line.split("#")[0]) for line in block.group(1).splitlines() if line.strip()]


def _small(args: list[str], run: str | None) -> list[str]:
    """One tour line at small sizes (the flags it has keep their meaning)."""
    command, rest = args[1], args[2:]
    rest = [run if a.startswith("runs/") and run else a for a in rest]
    if command == "memory":  # a peak of 35 % is only reachable where activations dominate: the line's own batch
        return [command, *rest]
    if "--batch" in rest:
        rest[rest.index("--batch") + 1] = "2"
    model = rest[0] if rest and not rest[0].startswith("-") else None
    if model in SMALL_INPUT and "--input" not in rest:
        rest += ["--input", SMALL_INPUT[model]]
    extra = {"bench": ["--rounds", "1", "--no-compile", "--compile-budget", "0"],
             "train": FAST_TRAIN, "prune": ["--epochs", "1", "--quiet"]}.get(command, [])
    if command == "optimize" and "--tune" in rest:
        extra = ["--tune-batch", "2", "--compile-budget", "0"]
    return [command, *rest, *extra]


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path, data_dir: Path) -> None:
    from PIL import Image

    (tmp_path / "net.py").write_text(NET)
    for k, name in enumerate(("dark", "light")):
        (tmp_path / "shapes" / "train" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((8, 8, 3), 40 + 150 * k + i, np.uint8)).save(
                tmp_path / "shapes" / "train" / name / f"{i}.png")
    run = None
    for args in _tour():
        line = _small(args, run)
        if line[0] == "train" and "--data" not in line:
            line += ["--json"]  # the run the eval and prune lines use
        r = run_cli(*line, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, f"{' '.join(line)}: {r.stderr[-2000:]}"
        if "--json" in line and line[0] == "train":
            run = json.loads(r.stdout)["run_dir"]
