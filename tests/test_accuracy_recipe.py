"""The accuracy recipe's parts: random erasing, the weight average that is evaluated and saved, mirrored
test-time augmentation, and their bad values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from branchgraph.data.fashion_mnist import Preprocess, random_erase
from branchgraph.errors import ConfigError
from branchgraph.training import build_config, evaluate_checkpoint, train
from tests.conftest import run_cli


def test_random_erasing_zeroes_one_rectangle_per_chosen_image_reproducibly() -> None:
    x = torch.ones(64, 1, 28, 28)
    a = random_erase(x, 1.0, torch.Generator().manual_seed(3))
    b = random_erase(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    zeros = (a == 0)[:, 0]
    areas = zeros.sum((1, 2)).float() / (28 * 28)
    assert ((areas >= 0.01) & (areas <= 0.36)).all()  # 2-33 % of the area, rounded to whole pixels
    for mask in zeros:  # one axis-aligned rectangle: its bounding box is all zeros
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.sum() == mask.sum()
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(3)), x)
    half = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    assert 10 < int(((half == 0).flatten(1).any(1)).sum()) < 54
    images = torch.full((4, 1, 28, 28), 128, dtype=torch.uint8)
    assert torch.equal(Preprocess(erase=1.0)(images), Preprocess()(images))  # evaluation: no generator, no erasing


def test_the_evaluated_and_saved_model_is_the_weight_average(tmp_path: Path, data_dir: Path) -> None:
    overrides = {"model_kwargs": {"width": 0.25}, "limit": 256, "batch_size": 64, "epochs": 2, "val_size": 256,
                 "ema_decay": 0.5, "tta_flip": True, "random_erasing": 0.5, "precision": "fp32",
                 "channels_last": False, "out_dir": str(tmp_path)}
    result = train(build_config("fast", overrides=overrides), progress=False)
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert state["ema"]["n_averaged"].item() == 2 * 4  # 4 steps per epoch
    assert not all(torch.equal(state["model"][k], state["ema"][f"module.{k}"]) for k in state["model"])
    found = evaluate_checkpoint(result.run_dir)
    assert found["accuracy"] == pytest.approx(result.final["test_acc"], abs=1e-12)


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--random-erasing", "1.5", "--random-erasing must be a probability"),
    ("--ema-decay", "1", "--ema-decay must be in (0, 1)"),
])
def test_bad_recipe_values_fail_in_one_line(tmp_path: Path, flag: str, value: str, words: str) -> None:
    r = run_cli("train", flag, value, "--out-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_accurate_preset_is_the_documented_recipe() -> None:
    config = build_config("accurate")
    assert (config.model_kwargs, config.epochs, config.crop_padding, config.hflip, config.random_erasing,
            config.ema_decay, config.tta_flip) == ({"width": 0.5}, 50, 2, True, 0.5, 0.999, True)
    assert json.loads(config.to_json())["ema_decay"] == 0.999
    with pytest.raises(ConfigError):
        build_config("accurate", overrides={"random_erasing": -0.1})


def test_sprint_preset_is_the_documented_recipe() -> None:
    config, fast = build_config("sprint"), build_config("fast")
    assert (config.model, config.model_kwargs, config.epochs, config.hflip, config.tta_flip, config.ema_decay,
            config.crop_padding, config.random_erasing) == ("googlenet-fmnist", {}, 10, True, True, None, 0, 0.0)
    assert (config.lr, config.batch_size, config.schedule, config.label_smoothing) == (
        fast.lr, fast.batch_size, fast.schedule, fast.label_smoothing)


def test_a_presets_model_options_stay_with_its_model() -> None:
    assert build_config("accurate", overrides={"model": "vgg16"}).model_kwargs == {}
    assert build_config("accurate", overrides={"model": "googlenet-fmnist"}).model_kwargs == {"width": 0.5}
    given = build_config("accurate", overrides={"model": "vgg16", "model_kwargs": {"in_channels": 1}})
    assert given.model_kwargs == {"in_channels": 1}
