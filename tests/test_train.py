"""The trainer: run outputs, exact resume after SIGKILL and Ctrl-C, the NaN guard, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from branchgraph.errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from branchgraph.training import build_config, evaluate_checkpoint, resume, train
from branchgraph.training import trainer as trainer_module
from branchgraph.training.trainer import Trainer
from tests.conftest import REPO, run_cli

TINY = {"model_kwargs": {"width": 0.25}, "limit": 256, "batch_size": 64, "epochs": 2, "val_size": 1000}
# A run long enough to be killed in its second epoch: 16 steps per epoch.
KILLABLE = ["--model-kwargs", '{"width": 0.25}', "--limit", "512", "--batch-size", "32", "--epochs", "3",
            "--deterministic", "--threads", "1", "--quiet", "--crop-padding", "2", "--hflip", "--random-erasing",
            "0.5", "--ema-decay", "0.9", "--tta-flip"]
KILLABLE_SETTINGS = {"model_kwargs": {"width": 0.25}, "limit": 512, "batch_size": 32, "epochs": 3,
                     "deterministic": True, "threads": 1, "crop_padding": 2, "hflip": True, "random_erasing": 0.5,
                     "ema_decay": 0.9, "tta_flip": True}
TIMING = ("time_s", "images_per_s", "elapsed_s")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's weights and, where the run keeps one, its weight average's (``ema.`` keys)."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return {**state["model"], **{f"ema.{k}": v for k, v in (state.get("ema") or {}).items()}}


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"
    assert _metrics(a) == _metrics(b)


def test_train_api_writes_every_output(tmp_path: Path, data_dir: Path) -> None:
    config = build_config("fast", overrides={**TINY, "out_dir": str(tmp_path)})
    result = train(config, progress=False)
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.json", "curves.png", "metrics.csv", "metrics.jsonl", "report.md", "tuning.json"]
    # precision "auto" and channels_last None are resolved by measurement; the saved settings are the resolved ones
    assert (config.precision, config.channels_last) == ("auto", None)
    resolved = result.config
    assert resolved.precision in ("fp32", "bf16") and isinstance(resolved.channels_last, bool)
    assert json.loads((run / "config.json").read_text()) == json.loads(resolved.to_json())
    tuning = json.loads((run / "tuning.json").read_text())
    assert tuning["chosen"]["precision"] == resolved.precision
    assert tuning["chosen"]["channels_last"] == resolved.channels_last
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    expected = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "images_per_s", "world_size"}
    assert expected <= set(metrics[0])
    assert "Status: finished" in (run / "report.md").read_text()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0
    again = evaluate_checkpoint(run)
    assert again["accuracy"] == pytest.approx(metrics[-1]["test_acc"])
    assert again["samples"] == 256
    bf16 = evaluate_checkpoint(run, precision="bf16")  # inference in another precision than the run's
    assert bf16["precision"] == "bf16" and abs(bf16["accuracy"] - again["accuracy"]) <= 0.05
    with pytest.raises(ConfigError, match="precision must be one of"):
        evaluate_checkpoint(run, precision="auto")


# The tests comparing with the reference run go to one pytest-xdist worker (`make test` runs --dist loadgroup), which
# runs it once for all of them.
SAME_WORKER = pytest.mark.xdist_group("reference_run")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An uninterrupted deterministic run to compare interrupted ones with."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli("train", *KILLABLE, "--out-dir", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["run_dir"])


def _start(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "branchgraph.cli", "train", *KILLABLE, "--out-dir", str(out)],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_epoch(out: Path, proc: subprocess.Popen[str], epochs: int = 1) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for metrics in out.glob("*/metrics.jsonl"):
            if len(metrics.read_text().splitlines()) >= epochs:
                return metrics.parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never finished its first epoch")


@SAME_WORKER
def test_resume_after_sigkill_is_exact(tmp_path: Path, reference_run: Path) -> None:
    """Resumed with the other heap policy (the reference ran under ``keep``): the same weights and metrics, bit for
    bit, so the policy is free to differ on resume."""
    proc = _start(tmp_path)
    run = _wait_for_epoch(tmp_path, proc)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(_metrics(run)) < 3
    resumed = run_cli("train", "--resume", str(run), "--quiet", "--heap", "system")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run, reference_run)


@SAME_WORKER
def test_ctrl_c_cli_is_one_line_and_resumes_exactly(tmp_path: Path, reference_run: Path) -> None:
    """SIGINT to the CLI wherever it lands: one line, exit 130, and the resumed run is exact."""
    proc = _start(tmp_path)
    run = _wait_for_epoch(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr
    assert f"--resume {run}" in stderr
    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(run, reference_run)


@pytest.fixture()
def restore_torch_settings():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@SAME_WORKER
def test_ctrl_c_mid_epoch_saves_the_exact_position(
    tmp_path: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch, restore_torch_settings: None
) -> None:
    """A real SIGINT delivered during step 6 of epoch 2: the run stops after that step, saves epoch 1 step 6,
    and resuming ends exactly like the uninterrupted run."""
    real = Trainer._check_finite

    def interrupt_during_step_6(self: Trainer, loss: torch.Tensor) -> None:
        real(self, loss)
        if (self.epoch, self.step) == (1, 5) and not self.stop_requested:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "_check_finite", interrupt_during_step_6)
    config = build_config("fast", overrides={**KILLABLE_SETTINGS, "out_dir": str(tmp_path)})
    with pytest.raises(Interrupted, match="interrupted at epoch 2 step 6"):
        train(config, progress=False)
    monkeypatch.undo()
    run = next(tmp_path.iterdir())
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 6)
    assert state["elapsed"] > state["metrics"][0]["elapsed_s"]  # the 6 steps of epoch 2 count as training time
    assert "Status: interrupted" in (run / "report.md").read_text()
    resume(run, progress=False)
    _assert_same_run(run, reference_run)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_module.compute_loss
    calls = {"n": 0}

    def poisoned(output, target, smoothing):
        calls["n"] += 1
        loss, logits = real(output, target, smoothing)
        return (loss * float("nan") if calls["n"] == 6 else loss), logits  # step 2 of epoch 2

    monkeypatch.setattr(trainer_module, "compute_loss", poisoned)
    config = build_config("fast", overrides={**TINY, "out_dir": str(tmp_path), "epochs": 3})
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2 step 2") as err:
        train(config, progress=False)
    run = next(tmp_path.iterdir())
    assert str(run) in str(err.value)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(_metrics(run)) == 1
    assert "stopped: the loss diverged" in (run / "report.md").read_text()


def test_cli_nan_loss_is_one_line_exit_2(tmp_path: Path, data_dir: Path) -> None:
    result = run_cli("train", "--model", "googlenet-d2l", "--resize", "28", "--limit", "128", "--batch-size", "64",
                     "--lr", "1e12", "--schedule", "constant", "--epochs", "2", "--quiet",
                     "--out-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "loss became" in result.stderr and "lower --lr" in result.stderr
    run = next(tmp_path.iterdir())
    assert (run / "config.json").is_file() and (run / "report.md").is_file()


def test_ddp_two_processes_match_one(tmp_path: Path, data_dir: Path) -> None:
    # One epoch of 4 steps: over more steps at lr 0.2 this deep net without BatchNorm amplifies the
    # float32 rounding differences of the two summation orders beyond any useful tolerance.
    common = ["--model", "googlenet-d2l", "--limit", "256", "--batch-size", "64", "--epochs", "1",
              "--deterministic", "--quiet", "--val-size", "64", "--crop-padding", "2", "--hflip", "--json"]
    single = run_cli("train", *common, "--threads", "2", "--out-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "branchgraph.cli", "train", *common, "--threads", "1", "--out-dir", str(tmp_path / "two")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = Path(json.loads(single.stdout)["run_dir"])
    two = next((tmp_path / "two").iterdir())
    # rank 0 alone reports: stdout is one JSON document (both ranks printed one before)
    assert Path(json.loads(ddp.stdout)["run_dir"]) == two
    w1, w2 = _weights(one), _weights(two)
    for key in w1:
        # Same global batch; only the order of the gradient sums differs (float32 rounding, ~1e-8 seen).
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6, msg=key)
    m1, m2 = _metrics(one), _metrics(two)
    assert [m.pop("world_size") for m in m1] == [1] and [m.pop("world_size") for m in m2] == [2]
    for a, b in zip(m1, m2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_presets_and_layering(tmp_path: Path) -> None:
    d2l = build_config("d2l")
    assert (d2l.model, d2l.resize, d2l.optimizer, d2l.lr, d2l.epochs, d2l.batch_size, d2l.momentum) == (
        "googlenet-d2l", 96, "sgd", 0.1, 10, 128, 0.0)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"epochs": 7, "lr": 0.05}))
    cfg = build_config("d2l", cfg_file, {"lr": 0.01, "epochs": None})
    assert (cfg.epochs, cfg.lr, cfg.model) == (7, 0.01, "googlenet-d2l")
    cfg_file.write_text(json.dumps({"epoch": 7}))
    with pytest.raises(ConfigError, match="unknown setting"):
        build_config("fast", cfg_file)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("slow")


def test_resume_refuses_changed_settings_and_bad_checkpoints(tmp_path: Path) -> None:
    result = run_cli("train", "--resume", str(tmp_path), "--lr", "0.5")
    assert result.returncode == 2 and "drop --lr" in result.stderr
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    for args in (("train", "--resume", str(tmp_path)), ("eval", str(tmp_path))):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "cannot read checkpoint" in result.stderr
    assert bad.read_bytes() == b"not a checkpoint"  # nothing already written is lost
    with pytest.raises(CheckpointError):
        resume(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--epochs", "0"),
        ("train", "--no-such-flag"),
        ("train", "--model", "resnet9"),
        ("train", "--precision", "fp8"),
        ("train", "--precision", "bogus"),
        ("train", "--model-kwargs", "{bad json"),
        ("train", "--data-dir", "/nonexistent"),
        ("train", "--out-dir", "/proc/branchgraph-runs", "--limit", "64"),
        ("train", "--device", "cuda") if not torch.cuda.is_available() else ("train", "--batch-size", "-1"),
        ("bogus-command",),
    ],
)
def test_bad_cli_input_is_one_line_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "error" in result.stderr


def test_models_command_json() -> None:
    result = run_cli("models", "--json")
    assert result.returncode == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["googlenet-d2l"]["params"] == 5_977_530 and rows["vgg16"]["params"] == 138_357_544


def test_train_json_stdout_is_only_json(tmp_path: Path, data_dir: Path) -> None:
    """Progress and per-epoch lines go to stderr, so ``--json`` output parses even without ``--quiet``."""
    result = run_cli("train", "--model-kwargs", '{"width": 0.25}', "--limit", "128", "--batch-size", "64",
                     "--epochs", "1", "--out-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs_done"] == 1
    assert '"epoch": 1' in result.stderr
