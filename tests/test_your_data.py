"""Training on the user's data: an image folder from the CLI, a data factory spec, datasets and DataLoaders from
Python; the model's channels and classes from the data; bad folders and files in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import branchgraph as bg
from branchgraph.data.images import from_python, image_folder
from branchgraph.errors import CheckpointError, ConfigError, DataError
from tests.conftest import run_cli

NET = "tests/nets.py:TwoBranchNet"
FAST = ("--epochs", "1", "--batch-size", "8", "--precision", "fp32", "--no-channels-last", "--quiet")
COLOURS = ("blue", "green", "red")


def _folder(root: Path, per_class: int = 6, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """Small RGB images whose dominant channel is the class, a grey one and one of another size among them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for k, name in enumerate(COLOURS):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                a = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
                a[..., 2 - k] += 150
                Image.fromarray(a).save(root / split / name / f"{i}.png")
    Image.fromarray(np.full((12, 12), 90, np.uint8)).save(root / "train" / "red" / "grey.png")
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(root / "train" / "blue" / "large.jpg")
    return root


def test_an_image_folder_is_read_as_rgb_of_one_size_with_its_own_statistics(tmp_path: Path) -> None:
    data = image_folder(_folder(tmp_path), val_size=5000, limit=None)
    assert data.classes == COLOURS and data.image_size == (3, 12, 12)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 18, "test": 18}
    x = data.splits["train"].images.float() / 255
    assert data.mean == pytest.approx(tuple(x.mean((0, 2, 3)).tolist()))
    no_val = image_folder(_folder(tmp_path / "b", splits=("train",)), val_size=4, limit=None)
    assert sorted(no_val.splits) == ["train", "val"] and len(no_val.splits["val"]) == 4
    tenth = image_folder(tmp_path / "b", val_size=None, limit=None)  # the training default: a tenth held out
    assert len(tenth.splits["val"]) == 2 and len(tenth.splits["train"]) == 18


def test_cli_trains_a_user_net_on_an_image_folder_evaluates_and_resumes_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "shapes")
    r = run_cli("train", "--model", NET, "--data", str(folder), "--out-dir", str(tmp_path / "runs"), "--lr", "0.05",
                "--json", *FAST)
    assert r.returncode == 0, r.stderr
    run = Path(json.loads(r.stdout)["run_dir"])
    assert json.loads((run / "config.json").read_text())["data"] == str(folder)
    assert "data `" in (run / "report.md").read_text()
    r = run_cli("eval", str(run), "--model", NET, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["samples"] == 18, r.stderr
    r = run_cli("train", "--resume", str(run), "--epochs", "2", "--model", NET, "--quiet", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["epochs_done"] == 2, r.stderr


def test_a_registry_model_takes_the_data_channels_and_classes(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "shapes")
    result = bg.train("googlenet-fmnist", data=str(folder), epochs=1, batch_size=8, precision="fp32",
                      channels_last=False, out_dir=str(tmp_path / "runs"), progress=False, model_kwargs={"width": 0.25})
    assert result.config.model_kwargs == {"width": 0.25, "in_channels": 3, "num_classes": 3}
    assert bg.evaluate(result.run_dir)["samples"] == 18  # rebuilt from the checkpoint's settings


def test_python_datasets_and_loaders_train_and_must_be_given_again(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 2, 10, 10, generator=gen), torch.randint(0, 4, (60,), generator=gen)
    train, val = TensorDataset(x[:40], y[:40]), DataLoader(TensorDataset(x[40:], y[40:]), batch_size=7)
    result = bg.train(NET, data=(train, val), epochs=1, batch_size=8, precision="fp32", channels_last=False,
                      out_dir=str(tmp_path), progress=False, model_kwargs={"in_chans": 2, "num_classes": 4},
                      memory_budget="0.5", ema_decay=0.9)  # a checkpoint plan and a weight average, on this data
    assert result.final["val_acc"] >= 0 and "val accuracy" in str(result)
    plan = json.loads((result.run_dir / "memory_plan.json").read_text())
    assert plan["input_shape"] == [8, 2, 10, 10] and plan["saved_bytes"] <= plan["budget_bytes"]
    assert bg.evaluate(result.run_dir, split="val", model=NET, data=(train, val))["samples"] == 20
    with pytest.raises(ConfigError, match="given in Python: give them again"):
        bg.evaluate(result.run_dir, split="val", model=NET)
    with pytest.raises(ConfigError, match=r"gives \[2, 3\].*4 logits"):
        bg.train(NET, data=(train, val), epochs=1, precision="fp32", channels_last=False, out_dir=str(tmp_path),
                 progress=False, model_kwargs={"in_chans": 2})


def test_a_data_spec_in_a_checkpoint_runs_only_when_named_again_or_trusted(tmp_path: Path) -> None:
    factory = tmp_path / "mydata.py"
    factory.write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def make():\n    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.rand(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)\n"
        "    return TensorDataset(x[:24], y[:24]), TensorDataset(x[24:], y[24:])\n")
    spec = f"{factory}:make"
    result = bg.train(NET, data=spec, epochs=1, batch_size=8, precision="fp32", channels_last=False,
                      out_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match=r"data spec .* imports and runs Python code"):
        bg.evaluate(result.run_dir, model=NET, split="val")
    assert bg.evaluate(result.run_dir, model=NET, data=spec, split="val")["samples"] == 8
    assert bg.evaluate(result.run_dir, model=NET, trust_checkpoint=True, split="val")["samples"] == 8


@pytest.mark.parametrize("damage", ["no_train", "no_classes", "corrupt", "unknown_class", "empty"])
def test_a_bad_image_folder_is_one_line_naming_the_fix(tmp_path: Path, damage: str) -> None:
    folder = _folder(tmp_path / "d") if damage != "no_train" else tmp_path / "d"
    if damage == "no_train":
        folder.mkdir()
    elif damage == "no_classes":
        for f in (folder / "train").rglob("*"):
            if f.is_file():
                f.unlink()
        for d in sorted((folder / "train").iterdir()):
            d.rmdir()
    elif damage == "corrupt":
        (folder / "train" / "red" / "0.png").write_bytes(b"not a png")
    elif damage == "unknown_class":
        (folder / "val" / "purple").mkdir()
    else:
        for f in (folder / "test").rglob("*.png"):
            f.unlink()
    expected = {"no_train": "has no train/ folder", "no_classes": "has no class folders",
                "corrupt": "cannot read image .*0.png", "unknown_class": "class folders that train/ does not: purple",
                "empty": "holds no images"}[damage]
    with pytest.raises(DataError, match=expected):
        image_folder(folder, 0, None)
    r = run_cli("train", "--model", NET, "--data", str(folder), "--out-dir", str(tmp_path / "runs"), *FAST)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_python_data_of_the_wrong_form_is_one_line() -> None:
    with pytest.raises(DataError, match="must be \\(train, val\\[, test\\]\\)"):
        from_python(42, 0, None)
    with pytest.raises(DataError, match="must yield \\(image, label\\) pairs"):
        from_python(([torch.zeros(3, 4, 4)],), 0, None)
    with pytest.raises(DataError, match="differ in size"):
        from_python(([(torch.zeros(3, 4, 4), 0)], [(torch.zeros(3, 5, 5), 1)]), 0, None)


def _tensor_data(channels: int = 2, classes: int = 4) -> tuple[TensorDataset, TensorDataset]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, channels, 8, 8, generator=gen), torch.randint(0, classes, (48,), generator=gen)
    return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])


def test_tensorboard_csv_and_early_stopping(tmp_path: Path) -> None:
    """A learning rate too small to move the weights: the validation accuracy stalls, and the run stops after the
    patience; every epoch is in metrics.csv and in TensorBoard's event file."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = bg.train(NET, data=_tensor_data(), epochs=6, early_stop=1, lr=1e-12, log="tensorboard", batch_size=8,
                      precision="fp32", channels_last=False, out_dir=str(tmp_path), progress=False,
                      model_kwargs={"in_chans": 2, "num_classes": 4})
    assert len(result.metrics) == 2
    assert "stopped early after epoch 2" in (result.run_dir / "report.md").read_text()
    csv = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,train_loss,train_acc,lr") and len(csv) == 3
    events = EventAccumulator(str(result.run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "val/acc", "lr", "images_per_s"} <= set(tags)
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2]


def test_logging_needs_its_package_and_early_stopping_a_validation_split(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    options = {"epochs": 1, "batch_size": 8, "precision": "fp32", "channels_last": False, "out_dir": str(tmp_path),
               "progress": False, "model_kwargs": {"in_chans": 2, "num_classes": 4}}
    with pytest.raises(ConfigError, match="no val split"):
        bg.train(NET, data=(_tensor_data()[0],), early_stop=2, val_size=0, **options)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"log tensorboard needs the tensorboard package: pip install"):
        bg.train(NET, data=_tensor_data(), log="tensorboard", **options)
    assert not list(tmp_path.iterdir())  # refused before a run directory was made
    with pytest.raises(ConfigError, match="log must be one of tensorboard"):
        bg.train(NET, data=_tensor_data(), log="wandb", **options)


def test_branch_statistics_of_a_user_net_during_training(tmp_path: Path) -> None:
    """``--branch-stats`` on a net without branchgraph's Inception blocks records its forks with BranchMonitor:
    shares add up to 1 per fork, the heatmap and the epoch summary are written."""
    result = bg.train(NET, data=_tensor_data(), epochs=1, branch_stats=2, batch_size=8, precision="fp32",
                      channels_last=False, out_dir=str(tmp_path), progress=False,
                      model_kwargs={"in_chans": 2, "num_classes": 4})
    records = [json.loads(line) for line in (result.run_dir / "branch_stats.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [0, 2]
    fork = records[0]["blocks"]["cat"]
    assert sorted(fork["branches"]) == ["a", "b"]
    assert sum(b["share"] for b in fork["branches"].values()) == pytest.approx(1.0, abs=1e-4)
    assert all(b["param_grad"] > 0 and b["input_grad"] > 0 for b in fork["branches"].values())
    assert (result.run_dir / "branch_stats.png").stat().st_size > 0 and "branch_imbalance" in result.final
