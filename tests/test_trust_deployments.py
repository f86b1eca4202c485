"""Deployments are data: crafted files never run code or lead outside their folder, engines' load errors are one
line, and a rejected, failed or interrupted write leaves the old deployment as it was, with no debris."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import branchgraph as bg
from branchgraph import deploy
from branchgraph.errors import ConfigError
from branchgraph.inference import deployment, load, runtimes
from branchgraph.tune import Candidate, TuneResult

needs_runtimes = pytest.mark.skipif(not (runtimes.available("onnxruntime") and runtimes.available("openvino")),
                                    reason="pip install 'branchgraph[runtimes]'")


class Touch:
    """A pickle payload that creates a file when it is unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()


def _deploy(directory: Path, seed: int = 0) -> Path:
    return deploy.save(_net(seed), torch.randn(2, 1, 8, 8), TuneResult({}, Candidate()), directory)


def _rewrite(archive: Path, change: dict[str, bytes]) -> None:
    """Replace (or add) entries of a zip archive, ending in ``change``'s keys."""
    with zipfile.ZipFile(archive) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    for suffix, data in change.items():
        name = next((n for n in entries if n.endswith(suffix)), f"model/{suffix}")
        entries[name] = data
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_program_with_pickled_sample_inputs_is_refused_unrun(tmp_path: Path) -> None:
    out, marker = tmp_path / "served", tmp_path / "marker"
    _deploy(out)
    _rewrite(out / "model.pt2", {"sample_inputs/model.pt": _saved((Touch(marker),))})
    with pytest.raises(ConfigError, match=r"refusing to load .*model\.pt2"):
        load(out)
    assert not marker.exists()


def test_a_program_with_pickled_weights_or_foreign_entries_is_refused(tmp_path: Path) -> None:
    out, marker = tmp_path / "served", tmp_path / "marker"
    _deploy(out)
    with zipfile.ZipFile(out / "model.pt2") as z:
        name = next(n for n in z.namelist() if n.endswith("weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    path_name = config["config"][first]["path_name"]
    _rewrite(out / "model.pt2", {"weights_config.json": json.dumps(config).encode(),
                                 f"weights/{path_name}": _saved(Touch(marker))})
    with pytest.raises(ConfigError, match="marks tensors as pickled"):
        load(out)
    _deploy(out)
    _rewrite(out / "model.pt2", {"data/constants/custom_obj_0": pickle.dumps(Touch(marker))})
    with pytest.raises(ConfigError, match="custom_obj_0"):
        load(out)
    assert not marker.exists()


def test_a_graph_that_calls_python_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "served"
    _deploy(out)
    with zipfile.ZipFile(out / "model.pt2") as z:
        name = next(n for n in z.namelist() if n.endswith("models/model.json"))
        graph = z.read(name).decode()
    _rewrite(out / "model.pt2", {"models/model.json": graph.replace("torch.ops.aten.relu.default",
                                                                    "torch.os.system").encode()})
    with pytest.raises(ConfigError, match=r"calls 'torch\.os\.system'"):
        load(out)


def test_files_must_stay_inside_the_deployment(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "served", tmp_path / "elsewhere"
    _deploy(out)
    _deploy(elsewhere)
    (out / "model.pt2").unlink()
    (out / "model.pt2").symlink_to(elsewhere / "model.pt2")
    with pytest.raises(ConfigError, match="not links"):
        load(out)


@needs_runtimes
def test_engine_load_errors_are_one_line(tmp_path: Path) -> None:
    for engine, name in (("onnxruntime", "model.onnx"), ("openvino", "model.xml")):
        directory = tmp_path / engine
        directory.mkdir()
        (directory / "record.json").write_text(json.dumps({"engine": engine, "precision": "fp32"}))
        for file in deployment.FILES[engine]:
            (directory / file).write_bytes(b"\x08\x01garbage")
        with pytest.raises(ConfigError) as raised:
            load(directory)
        assert name in str(raised.value) and len(str(raised.value).splitlines()) == 1


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_rejected_write_leaves_the_old_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "served"
    _deploy(out)
    before = _snapshot(out)
    monkeypatch.setattr(deploy, "output_limit", lambda precision: -1.0)  # the check rejects whatever is written
    with pytest.raises(ConfigError, match="out directory is as it was"):
        _deploy(out, seed=1)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["served"]
    assert load(out) is not None


def test_an_interrupted_write_leaves_the_old_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "served"
    _deploy(out)
    before = _snapshot(out)

    def interrupt(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "load", interrupt)  # Ctrl-C once the new files are written, before they are checked
    with pytest.raises(KeyboardInterrupt):
        _deploy(out, seed=1)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_a_killed_writes_debris_is_removed_and_foreign_folders_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "served"
    debris = tmp_path / f".served.partial-{2**22 + 12345}-x"  # above any pid this system gives
    debris.mkdir()
    (debris / "model.pt2").write_bytes(b"half")
    running = tmp_path / f".served.partial-{os.getpid()}-y"  # a write in progress in a live process
    running.mkdir()
    _deploy(out)
    assert not debris.exists() and running.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a deployment written by branchgraph"):
        _deploy(mine)
    with pytest.raises(ConfigError, match="not a deployment written by branchgraph"):  # before any tuning
        bg.optimize(_net(), (1, 8, 8), mode="eval", tune=True, out=mine, engines=("nonesuch",))
    assert (mine / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("engine", ["torch", pytest.param("onnxruntime", marks=needs_runtimes)])
def test_the_deployed_module_is_the_one_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 engine: str) -> None:
    from tests.nets import TimmStyleInception

    def rebuilt(*_: object, **__: object) -> None:
        pytest.fail("the deployment was built again instead of written from the module returned")

    monkeypatch.setattr(deploy, "serving_module", rebuilt)
    monkeypatch.setattr(deploy, "optimize", rebuilt)
    torch.manual_seed(0)
    out = tmp_path / "served"
    net, report = bg.optimize(TimmStyleInception().eval(), (1, 16, 16), tune=True, tune_batch=4, engines=(engine,),
                              out=out, cache=False, rounds=1)
    assert report.tuning.chosen.engine == engine
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(load(out)(x), net(x), rtol=1e-5, atol=1e-5)
