"""Every command line in the README and docs/ runs as written, at small sizes: each line's model gets a small
input, batches, rounds and epochs shrink, compilation is left out (a line with a peak budget keeps its batch: such
a peak is only reachable where activations dominate), and the example run directories are one run made here. The
files the lines name (net.py, shapes/, mydata.py, my.json, mypkg/nets.py, path/to/nets.py) are written first.
Lines for an optional extra or a GPU run only where it is there. Slow (minutes): ``make test-slow``; the default
suite parses every line (tests/test_docs.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_cli

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SMALL_INPUT = {"googlenet-d2l": "1,48,48", "googlenet-d2l-3x3": "1,48,48", "googlenet": "3,96,96"}
FAST_TRAIN = ["--epochs", "1", "--limit", "64", "--batch-size", "16", "--precision", "fp32", "--no-channels-last",
              "--quiet", "--out-dir", "runs"]
SHRINK = {"bench": ["--rounds", "1", "--no-compile", "--compile-budget", "0"],
          "bench-parallel": ["--batches", "1", "--rounds", "1"], "train": FAST_TRAIN,
          "prune": ["--epochs", "1", "--quiet"]}
FILES = {
    "net.py": "import torch\nfrom torch import nn\n\n\ndef make() -> nn.Module:\n"
              "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
              "nn.Flatten(), nn.Linear(4, 2))\n",
    "mydata.py": "import torch\nfrom torch.utils.data import TensorDataset\n\n\ndef splits():\n"
                 "    g = torch.Generator().manual_seed(0)\n"
                 "    x, y = torch.rand(80, 1, 28, 28, generator=g), torch.randint(0, 10, (80,), generator=g)\n"
                 "    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])\n",
    "my.json": json.dumps({"epochs": 1, "lr": 0.05}),
    "mypkg/__init__.py": "",
    "mypkg/nets.py": "from torch import nn\n\n\ndef build(in_chans: int = 3, num_classes: int = 5) -> nn.Module:\n"
                     "    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), "
                     "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n",
    "path/to/nets.py": "from torch import nn\n\n\nclass Net(nn.Module):\n"
                       "    def __init__(self, width: float = 1.0) -> None:\n        super().__init__()\n"
                       "        c = int(16 * width)\n        self.left = nn.Conv2d(3, c, 1)\n"
                       "        self.right = nn.Conv2d(3, c, 3, padding=1)\n"
                       "        self.head = nn.Linear(2 * c, 10)\n\n"
                       "    def forward(self, x):\n        import torch\n"
                       "        y = torch.cat([self.left(x).relu(), self.right(x).relu()], 1)\n"
                       "        return self.head(y.mean((2, 3)))\n",
}


def _lines() -> list[str]:
    """Each documented ``branchgraph``/``torchrun`` line once, in the order the documents give them."""
    found: dict[str, None] = {}
    for path in DOCUMENTS:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
            for line in (raw.split("#")[0].strip() for raw in block.splitlines()):
                if line.startswith(("branchgraph ", "torchrun ")):
                    found.setdefault(line)
    return list(found)


def _small(args: list[str], run: str) -> list[str]:
    """One documented line's arguments at small sizes (the flags it has keep their meaning)."""
    command, rest = args[0], [run if a.startswith("runs/") else a for a in args[1:]]
    if "--rounds" in rest:
        rest[rest.index("--rounds") + 1] = "1"
    elif "--measure" in rest:
        rest += ["--rounds", "1"]
    if command == "memory" and "--peak" in rest:
        return [command, *rest]
    if "--batch" in rest:
        rest[rest.index("--batch") + 1] = "2"
    model = rest[0] if rest and not rest[0].startswith("-") else None
    if model in SMALL_INPUT and "--input" not in rest:
        rest += ["--input", SMALL_INPUT[model]]
    extra = SHRINK.get(command, [])
    if command == "optimize" and "--tune" in rest:
        extra = ["--tune-batch", "2", "--compile-budget", "0"]
    if command == "train" and "--resume" in rest:
        extra = ["--epochs", "2", "--quiet"]
    return [command, *rest, *extra]


def _needs(line: str) -> str | None:
    """What the machine lacks to run this line, if anything."""
    if "--device cuda" in line and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if "timm:" in line and importlib.util.find_spec("timm") is None:
        return "needs the timm extra"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A folder with the files the documents name, and one finished run for the lines that take a run directory."""
    from PIL import Image

    root = tmp_path_factory.mktemp("docs")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for k, label in enumerate(("dark", "light")):
        (root / "shapes" / "train" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((8, 8, 3), 40 + 150 * k + i, np.uint8)).save(
                root / "shapes" / "train" / label / f"{i}.png")
    made = run_cli("train", *FAST_TRAIN, "--json", cwd=root, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    (root / "run").write_text(json.loads(made.stdout)["run_dir"])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("line", _lines())
def test_every_documented_command_runs(line: str, workdir: Path) -> None:
    if reason := _needs(line):
        pytest.skip(reason)
    words = shlex.split(line)
    run = (workdir / "run").read_text()
    if words[0] == "torchrun":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:words.index("-m")]]
        cli = _small(words[words.index("branchgraph.cli") + 1:], run)
        r = subprocess.run([*launcher, "-m", "branchgraph.cli", *cli], cwd=workdir, capture_output=True, text=True,
                           timeout=600)
    else:
        cli = _small(words[1:], run)
        r = run_cli(*cli, cwd=workdir, timeout=600)
    assert r.returncode == 0, f"{' '.join(cli)}: {r.stderr[-2000:]}"


def test_the_lines_cover_every_command() -> None:
    """The documents show every CLI command at least once, so every command runs here."""
    from branchgraph.cli import COMMANDS

    shown = {shlex.split(line)[1] for line in _lines() if line.startswith("branchgraph ")}
    assert shown == set(COMMANDS), set(COMMANDS) - shown
