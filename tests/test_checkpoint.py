"""Atomic writes and safe loading of checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from branchgraph.errors import CheckpointError
from branchgraph.training.run_state import atomic_write_bytes, load_checkpoint, save_checkpoint


def test_crash_before_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 3, "metrics": [{"acc": 0.5}], "w": torch.arange(4.0)})
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_foreign_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"not": "ours"}, path)
    with pytest.raises(CheckpointError, match="not a branchgraph checkpoint"):
        load_checkpoint(path)
    torch.save({"format": 1, "evil": Path("/etc")}, path)  # an arbitrary class: refused by weights_only
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    atomic_write_bytes(path, b"garbage that is no pickle")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
