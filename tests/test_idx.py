"""The IDX reader on the real Fashion-MNIST files and on corrupted copies of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from branchgraph.data import CLASSES, load_fashion_mnist, load_split, read_idx
from branchgraph.errors import DataError
from tests.conftest import gunzip, gzip_write, run_cli


def test_real_files(data_dir: Path) -> None:
    train, test = load_split("train", data_dir), load_split("test", data_dir)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert len(CLASSES) == 10
    # The per-pixel statistics we normalise with are those of the real training set.
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-4)


def test_validation_split_is_fixed_and_disjoint(data_dir: Path) -> None:
    a = load_fashion_mnist(data_dir, val_size=5000)
    b = load_fashion_mnist(data_dir, val_size=5000)
    assert len(a["train"]) == 55000 and len(a["val"]) == 5000
    assert torch.equal(a["val"].images, b["val"].images)
    train_rows = {bytes(x) for x in a["train"].images[:, 0].reshape(55000, -1).numpy()[:2000]}
    assert not train_rows & {bytes(x) for x in a["val"].images[:, 0].reshape(5000, -1).numpy()}
    limited = load_fashion_mnist(data_dir, val_size=5000, limit=100)
    assert {k: len(v) for k, v in limited.items()} == {"train": 100, "test": 100, "val": 100}


def _corrupt(folder: Path, stem: str, edit) -> Path:
    path = folder / f"{stem}.gz"
    gzip_write(path, edit(gunzip(path)))
    return path


@pytest.mark.parametrize(
    ("stem", "edit", "message"),
    [
        ("train-labels-idx1-ubyte", lambda raw: raw[:-10], "truncated"),
        ("t10k-images-idx3-ubyte", lambda raw: raw[:16 + 28 * 28 * 50], "truncated"),
        ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x08\x01" + raw[4:], "bad IDX magic"),
        ("t10k-labels-idx1-ubyte", lambda raw: raw[:-1] + b"\x0c", "out of range"),
        ("t10k-labels-idx1-ubyte", lambda raw: raw[:4] + np.array([9999], ">u4").tobytes() + raw[8:9999 + 8],
         "expected 10000"),
        ("train-labels-idx1-ubyte", lambda raw: b"\x00\x00", "too short"),
    ],
    ids=["truncated-labels", "truncated-images", "bad-magic", "label-range", "wrong-count", "tiny"],
)
def test_corrupt_copies(data_copy: Path, stem: str, edit, message: str) -> None:
    path = _corrupt(data_copy, stem, edit)
    split = "train" if stem.startswith("train") else "test"
    with pytest.raises(DataError, match=message) as err:
        load_split(split, data_copy)
    assert str(path) in str(err.value)


def test_broken_gzip_stream(data_copy: Path) -> None:
    path = data_copy / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as err:
        load_split("train", data_copy)
    assert str(path) in str(err.value)


def test_read_idx_uncompressed(tmp_path: Path) -> None:
    raw = b"\x00\x00\x08\x02" + np.array([2, 3], ">u4").tobytes() + bytes(range(6))
    (tmp_path / "x").write_bytes(raw)
    assert read_idx(tmp_path / "x", ndim=2).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(tmp_path / "x", ndim=3)


def test_cli_corrupt_data_is_one_line_exit_2(data_copy: Path, tmp_path: Path) -> None:
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    result = run_cli("train", "--data-dir", str(data_copy), "--limit", "64", "--out-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr


def test_cli_missing_data_dir() -> None:
    result = run_cli("train", "--data-dir", "/nonexistent")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0] and "apt-get install dataset-fashion-mnist" in lines[0]


def test_env_var_points_elsewhere(tmp_path: Path) -> None:
    result = run_cli("train", env={"BRANCHGRAPH_DATA": str(tmp_path / "nothing-here")})
    assert result.returncode == 2 and "nothing-here" in result.stderr
