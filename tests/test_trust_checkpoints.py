"""Checkpoints and settings files are data: crafted ones never run code, wrong types are one line, and run
directories and temporary files behave under races and kills."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchgraph.errors import CheckpointError, ConfigError
from branchgraph.training import TrainConfig, build_config, evaluate_checkpoint
from branchgraph.training.distributed import DistInfo
from branchgraph.training.run_state import (
    CHECKPOINT_NAME,
    load_checkpoint,
    make_run_dir,
    remove_stale_temporaries,
    save_checkpoint,
    saved_config,
)
from tests.conftest import run_cli

FACTORY = '''
from pathlib import Path
from torch import nn

def build(marker):
    Path(marker).write_text("ran")
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
'''


def _spec_checkpoint(tmp_path: Path, data_dir: Path) -> tuple[Path, Path, str]:
    """A run directory whose checkpoint names a file-spec model that leaves a marker when it is built."""
    factory, marker = tmp_path / "evil.py", tmp_path / "marker"
    factory.write_text(FACTORY)
    spec = f"{factory}:build"
    config = TrainConfig(model=spec, model_kwargs={"marker": str(marker)}, limit=64, val_size=0,
                         data_dir=str(data_dir), precision="fp32", channels_last=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / CHECKPOINT_NAME, {"config": asdict(config), "model": model.state_dict(), "epoch": 1})
    return run, marker, spec


def test_a_checkpoints_model_spec_is_not_run_without_consent(tmp_path: Path, data_dir: Path) -> None:
    run, marker, spec = _spec_checkpoint(tmp_path, data_dir)
    with pytest.raises(CheckpointError, match=r"never runs code.*trust_checkpoint"):
        evaluate_checkpoint(run)
    for command in (["eval", str(run)], ["prune", str(run), "--quiet"], ["train", "--resume", str(run), "--quiet"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert "--trust-checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    # named again, or trusted: the user's own choice to run it
    assert evaluate_checkpoint(run, model=spec)["samples"] == 64
    assert marker.read_text() == "ran"
    marker.unlink()
    assert run_cli("eval", str(run), "--trust-checkpoint").returncode == 0
    assert marker.exists()
    with pytest.raises(ConfigError, match="was trained as model"):
        evaluate_checkpoint(run, model="googlenet-fmnist")


def test_a_registry_model_in_a_checkpoint_needs_no_consent() -> None:
    state = {"config": asdict(TrainConfig(model="googlenet-fmnist", model_kwargs={"width": 0.25}))}
    assert saved_config(state, "c.pt").model_kwargs == {"width": 0.25}


def test_checkpoint_settings_of_the_wrong_type_are_one_line(tmp_path: Path) -> None:
    for bad in ({"epochs": "3"}, {"model": 5}, {"model_kwargs": [1]}, {"lr": None}):
        state = {"config": {**asdict(TrainConfig()), **bad}}
        with pytest.raises(ConfigError, match=f"checkpoint c.pt: {next(iter(bad))} must be"):
            saved_config(state, "c.pt")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        saved_config({"config": [1, 2]}, "c.pt")


@pytest.mark.parametrize(("settings_", "message"), [
    ({"epochs": "3"}, "epochs must be an integer, got \"3\""),
    ({"resize": "96"}, "resize must be an integer or null, got \"96\""),
    ({"model": 5}, "model must be text, got 5"),
    ({"model_kwargs": [1]}, "model_kwargs must be a JSON object, got a list"),
    ({"epochs": None, "lr": None}, "epochs must be an integer, got null; lr must be a number, got null"),
    ({"batch_size": 1.5}, "batch_size must be an integer, got 1.5"),
    ({"hflip": 1}, "hflip must be true or false, got 1"),
])
def test_config_files_with_wrong_types_say_which_field(tmp_path: Path, settings_: dict, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(settings_))
    with pytest.raises(ConfigError) as raised:
        build_config(config_file=path)
    assert message in str(raised.value)
    result = run_cli("train", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
FIELDS = [f for f in asdict(TrainConfig()) if f not in ("out_dir", "data_dir")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4))
def test_random_settings_never_give_a_traceback(values: dict) -> None:
    try:
        build_config(overrides=values)
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1


def test_a_checkpoint_without_weights_or_epochs_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    config = asdict(TrainConfig(limit=64, val_size=0, data_dir=str(data_dir), precision="fp32"))
    for state, message in (({"config": config}, "weights do not fit"),
                           ({"config": config, "model": {}, "ema": [1]}, "weights do not fit")):
        save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
        with pytest.raises(CheckpointError, match=message):
            evaluate_checkpoint(tmp_path)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"config": config, "model": {}, "epoch": "1"})
    result = run_cli("train", "--resume", str(tmp_path), "--epochs", "2")
    assert result.returncode == 2 and "does not say how many epochs" in result.stderr


def test_corrupt_checkpoint_messages_are_whole_and_give_no_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": 1, "evil": Path("/etc")}, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    text = str(raised.value)
    assert "weights_only" not in text and "Python objects" in text and text.endswith("written by training")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(\w+\); train again"):
        load_checkpoint(path)


def test_run_directories_are_created_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(out_dir=str(tmp_path / "runs"))
    monkeypatch.setattr(Path, "exists", lambda self: False)  # every process checked before any created
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(make_run_dir(config, DistInfo()))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 20 and all(p.is_dir() for p in made)


def test_a_killed_checkpoint_writes_debris_is_removed_on_resume(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"epoch": 1})
    for n in range(3):
        (tmp_path / f".{CHECKPOINT_NAME}.k{n}ll3d.tmp").write_bytes(b"x" * 100)
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_prune_writes_beside_the_run_not_to_its_recorded_folder(tmp_path: Path, data_dir: Path) -> None:
    elsewhere = tmp_path / "recorded-elsewhere"
    run = tmp_path / "moved" / "run"
    run.mkdir(parents=True)
    config = TrainConfig(model="googlenet-fmnist", model_kwargs={"width": 0.125}, limit=256, val_size=0, epochs=1,
                         batch_size=128, data_dir=str(data_dir), precision="fp32", channels_last=False,
                         out_dir=str(elsewhere))
    torch.manual_seed(0)
    from branchgraph.models import create_model

    model = create_model(config.model, **config.model_kwargs)
    save_checkpoint(run / CHECKPOINT_NAME, {"config": asdict(config), "model": model.state_dict(), "epoch": 1})
    from branchgraph.training.prune_run import prune_and_finetune

    result = prune_and_finetune(run, amount=0.25, epochs=1, progress=False)
    assert Path(result["finetune_run_dir"]).parent == run.parent and not elsewhere.exists()

