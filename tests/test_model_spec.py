"""Models from outside the registry on the CLI (package.module:factory, file.py:factory, timm:NAME), per-operator
MAC totals against torchinfo, and training such a model."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from branchgraph.errors import ConfigError
from branchgraph.graph.operators import operator_macs
from branchgraph.models import create_model
from tests.conftest import run_cli
from tests.nets import InceptionV3Like

NETS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        def __init__(self, cin, c1, c3):
            super().__init__()
            self.b1 = nn.Conv2d(cin, c1, 1)
            self.b2a = nn.Conv2d(cin, c3, 1)
            self.b2b = nn.Conv2d(c3, c3, 3, padding=1)
            self.bp = nn.Conv2d(cin, c1, 1)

        def forward(self, x):
            pooled = F.max_pool2d(x, 3, 1, 1)
            return torch.cat([F.relu(self.b1(x)), F.relu(self.b2b(F.relu(self.b2a(x)))), F.relu(self.bp(pooled))], 1)


    class Net(nn.Module):
        def __init__(self, in_chans=3, num_classes=10):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 16, 3, stride=2, padding=1)
            self.block1 = Block(16, 8, 16)
            self.block2 = Block(32, 16, 32)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.block2(F.max_pool2d(self.block1(F.relu(self.stem(x))), 2))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


    def build(in_chans=3, num_classes=10):
        return Net(in_chans, num_classes)


    def broken():
        raise RuntimeError("factory failed on purpose")


    def not_a_model():
        return 3


    count = 3
''')


@pytest.fixture()
def user_dir(tmp_path: Path) -> Path:
    """A folder outside the repository holding a package ``mypkg`` with the module ``nets``."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(NETS)
    return tmp_path


def test_summary_of_a_package_outside_the_repo_and_of_a_file(user_dir: Path) -> None:
    r = run_cli("summary", "mypkg.nets:build", "--input", "3,64,64", "--json", cwd=user_dir)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "mypkg.nets:build" and data["total"]["params"] == 448 + 2864 + 11360 + 650
    r = run_cli("summary", "mypkg/nets.py:build", "--input", "1,32,32", "--model-kwargs", '{"in_chans": 1, '
                '"num_classes": 7}', "--json", cwd=user_dir)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["modules"]}
    assert rows["stem"]["params"] == 16 * 9 + 16 and rows["fc"]["output_shape"] == [1, 7]


@pytest.mark.parametrize(("spec", "words"), [
    ("nosuch.module:build", "no module named 'nosuch'"),
    ("mypkg.nets:nothing", "has no attribute 'nothing'"),
    ("mypkg.nets:broken", "factory failed on purpose"),
    ("mypkg.nets:not_a_model", "not an nn.Module"),
    ("mypkg.nets:count", "not a factory"),
    ("missing/file.py:build", "no file missing/file.py"),
    ("mypkg.nets:", "must look like"),
])
def test_bad_specs_raise_one_line(user_dir: Path, spec: str, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(user_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_spec puts the current folder on it
    with pytest.raises(ConfigError) as error:
        create_model(spec)
    for name in [n for n in sys.modules if n.split(".")[0] == "mypkg"]:
        del sys.modules[name]  # the next test's mypkg lives in another folder
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_bad_spec_on_the_cli_is_one_line_and_exit_2(user_dir: Path) -> None:
    r = run_cli("summary", "mypkg.nets:broken", "--input", "3,32,32", cwd=user_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "factory failed on purpose" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_spec_needs_an_input_size_and_bad_kwargs_fail_in_one_line(user_dir: Path) -> None:
    r = run_cli("summary", "mypkg.nets:build", cwd=user_dir)
    assert r.returncode == 2 and "input size is unknown" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("summary", "mypkg.nets:build", "--input", "3,32,32", "--model-kwargs", '{"depth": 3}', cwd=user_dir)
    assert r.returncode == 2 and "unexpected keyword argument 'depth'" in r.stderr and r.stderr.count("\n") == 1


def test_other_commands_take_specs(user_dir: Path) -> None:
    r = run_cli("optimize", "mypkg.nets:build", "--input", "3,32,32", "--json", cwd=user_dir)
    assert r.returncode == 0 and json.loads(r.stdout)["verification"]["ok"], r.stderr
    r = run_cli("memory", "mypkg.nets:build", "--input", "3,32,32", "--budget", "0.3", "--batch", "4", "--json",
                cwd=user_dir)
    assert r.returncode == 0 and json.loads(r.stdout)["plan"]["saved_fraction"] <= 0.3, r.stderr
    r = run_cli("branches", "mypkg.nets:build", "--input", "3,32,32", "--json", cwd=user_dir)
    assert r.returncode == 0 and len(json.loads(r.stdout)["forks"]) == 2, r.stderr


def test_train_a_spec_model_or_say_why_it_does_not_fit(user_dir: Path, data_dir: Path) -> None:
    common = ["--limit", "256", "--batch-size", "64", "--epochs", "1", "--val-size", "64", "--precision", "fp32",
              "--data-dir", str(data_dir), "--out-dir", str(user_dir / "runs"), "--quiet"]
    r = run_cli("train", "--model", "mypkg.nets:build", *common, cwd=user_dir)
    assert r.returncode == 2 and "takes 3-channel images, not 1" in r.stderr and r.stderr.count("\n") == 1
    assert '"in_chans": 1' in r.stderr
    r = run_cli("train", "--model", "mypkg.nets:build", "--model-kwargs", '{"in_chans": 1, "num_classes": 5}',
                *common, cwd=user_dir)
    assert r.returncode == 2 and "10 logits" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("train", "--model", "mypkg.nets:build", "--model-kwargs", '{"in_chans": 1}', *common, "--json",
                cwd=user_dir)
    assert r.returncode == 0, r.stderr
    assert 0.0 < json.loads(r.stdout)["final"]["test_acc"] <= 1.0


def test_per_operator_totals_match_torchinfo_and_count_functional_calls() -> None:
    """On the Inception-v3-shaped net (blocks called in forward(), functional pools and cat), conv + linear +
    bias equals torchinfo's Mult-Adds of its Conv2d and Linear layers exactly."""
    torchinfo = pytest.importorskip("torchinfo")
    torch.manual_seed(0)
    model, x = InceptionV3Like(in_chans=3, width=0.25), torch.randn(2, 3, 75, 75)
    ours = operator_macs(model, x)
    theirs = torchinfo.summary(model, input_data=x, verbose=0)
    conv_linear = sum(layer.macs for layer in theirs.summary_list if layer.class_name in ("Conv2d", "Linear"))
    assert ours["conv"] + ours["linear"] + ours["bias"] == conv_linear
    assert ours["pool"] > 0 and ours["norm"] > 0 and ours["elementwise"] > 0  # F.max_pool2d, BN, ReLU


def test_timm_spec_without_timm_says_how_to_get_it_and_with_timm_builds(tmp_path: Path) -> None:
    r = run_cli("summary", "timm:inception_v3", "--input", "3,75,75", "--model-kwargs", '{"num_classes": 10}',
                "--json", cwd=tmp_path, timeout=600)
    if importlib.util.find_spec("timm") is None:
        assert r.returncode == 2 and "pip install timm" in r.stderr and r.stderr.count("\n") == 1
    else:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["modules"][-1]["output_shape"][-1] == 10


def test_a_timm_that_fails_to_import_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm beside a torchvision built for another torch fails inside its import (torchvision's ``nms``
    operator): one line naming the fix, not the import's traceback."""
    import importlib.abc

    from branchgraph.models import create_model

    class BrokenTorchvision(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "timm":
                raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenTorchvision(), *sys.meta_path])
    with pytest.raises(ConfigError, match=r"importing timm failed \(RuntimeError: operator torchvision::nms does "
                                          r"not exist\); its torchvision does not match torch") as error:
        create_model("timm:resnet18")
    assert "\n" not in str(error.value)
