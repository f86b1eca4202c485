"""The tuning cache is a file anyone may edit: a cached choice is checked again before it is used, a malformed
entry is measured again with one note, and tuners writing at once keep each other's entries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from branchgraph import candidates as candidates_module
from branchgraph.tune import tune
from branchgraph.tuning_cache import CACHE_FORMAT, CACHE_NAME, load_cache, update_cache
from tests.nets import RepVggLike


def _tuned(cache: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> object:
    monkeypatch.setenv("BRANCHGRAPH_CACHE_DIR", str(cache))
    monkeypatch.setattr(candidates_module, "native_bf16", lambda device: True)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return tune(RepVggLike().eval(), x, None, "eval", layouts=(False,), rounds=1, engines=("torch",), **options)


def _edit(cache: Path, change: object) -> None:
    path = cache / CACHE_NAME
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        change(entry)
    path.write_text(json.dumps(data))


def test_an_edited_choice_that_fails_verification_is_not_used(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = _tuned(tmp_path, monkeypatch, tolerance=0.0)  # reduced precision rejected: fp32 chosen
    assert first.chosen.precision == "fp32" and "bf16 weights NCHW" in first.rejected

    def choose_bf16(entry: dict) -> None:
        entry["chosen"] = {"precision": "bf16", "channels_last": False, "passes": None, "weights": True,
                           "engine": "torch"}
        entry["median_ms"]["bf16 weights NCHW"] = 0.001

    _edit(tmp_path, choose_bf16)
    again = _tuned(tmp_path, monkeypatch, tolerance=0.0)
    assert not again.cached and again.chosen.precision == "fp32"
    assert any("bf16 weights NCHW gives outputs" in n and "measured again" in n for n in again.notes)


@pytest.mark.parametrize("damage", ["no time for the choice", "no median_ms", "chosen is a list"])
def test_a_malformed_entry_is_measured_again_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         damage: str) -> None:
    first = _tuned(tmp_path, monkeypatch)
    changes = {"no time for the choice": lambda e: e["median_ms"].pop(first.chosen.name),
               "no median_ms": lambda e: e.pop("median_ms"), "chosen is a list": lambda e: e.update(chosen=[1])}
    _edit(tmp_path, changes[damage])
    again = _tuned(tmp_path, monkeypatch)
    assert not again.cached and any("was not used" in n for n in again.notes)
    assert again.chosen.name in again.to_text()
    assert _tuned(tmp_path, monkeypatch).cached  # the new measurement replaced the bad entry


def test_a_writer_merges_with_what_another_wrote_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    update_cache(path, "mine", {"n": 1})
    entries, _ = load_cache(path)  # another tuner reads, then this one writes, then the other writes
    update_cache(path, "theirs", {"n": 2})
    assert set(load_cache(path)[0]) == {"mine", "theirs"} and "theirs" not in entries


WRITER = """
import sys
from pathlib import Path
from branchgraph.tuning_cache import update_cache
for n in range(25):
    note = update_cache(Path(sys.argv[1]), f"{sys.argv[2]}-{n}", {"n": n})
    assert note is None, note
"""


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{i}"]) for i in range(4)]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    data = json.loads(path.read_text())
    assert data["format"] == CACHE_FORMAT and len(data["entries"]) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_NAME, CACHE_NAME + ".lock"]  # no temporaries
