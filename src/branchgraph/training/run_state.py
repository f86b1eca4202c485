"""A run's directory and its atomic checkpoints (temporary file, fsync, rename) that load with
``weights_only=True``."""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from branchgraph.errors import CheckpointError, ConfigError
from branchgraph.models.spec import is_spec
from branchgraph.training.config import TrainConfig
from branchgraph.training.data_source import is_code
from branchgraph.training.distributed import DistInfo, broadcast_str

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
FILE_MODE = 0o644  # mkstemp makes 0600 files; results are meant to be read by others too


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save ``state`` (tensors, numbers, strings, lists and dicts only)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the checkpoint inside a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run directory made by training")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain data only); unreadable files raise
    CheckpointError."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises an unsafe load: never relayed
        raise CheckpointError(f"cannot read checkpoint {path}: it holds Python objects other than tensors and plain "
                              "data, which branchgraph refuses to load; use a checkpoint written by training") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt ({type(exc).__name__}); "
                              "train again, or resume from an intact copy") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a branchgraph checkpoint (format {FORMAT_VERSION})")
    return state


def saved_config(state: dict[str, Any], path: str | Path, model: str | None = None,
                 trust_checkpoint: bool = False, data: str | None = None) -> TrainConfig:
    """The settings a checkpoint was trained with, checked as data. A registry model is built freely; a model
    spec imports code, so it is only used when the caller names the same spec again (``model``) or trusts the
    checkpoint: a file handed to branchgraph never runs code by itself. A data factory spec likewise (``data``)."""
    config = TrainConfig.from_dict(state.get("config"), source=f"checkpoint {path}").validate()
    if data is not None and data != config.data:
        raise ConfigError(f"checkpoint {path} was trained on data {config.data!r}, not {data!r}", "data")
    if is_code(config.data) and data is None and not trust_checkpoint:
        raise CheckpointError(f"checkpoint {path} names the data spec {config.data!r}, which imports and runs "
                              "Python code; a checkpoint alone never runs code: to run it, set trust_checkpoint "
                              "(or give that data spec again)", "trust_checkpoint")
    if model is not None and model != config.model:
        raise ConfigError(f"checkpoint {path} was trained as model {config.model!r}, not {model!r}", "model")
    if is_spec(config.model) and model is None and not trust_checkpoint:
        raise CheckpointError(f"checkpoint {path} names the model spec {config.model!r}, which imports and runs "
                              "Python code; a checkpoint alone never runs code: to run it, set trust_checkpoint "
                              "(or give that model spec again)", "trust_checkpoint")
    return config


def epochs_done(state: dict[str, Any], path: str | Path) -> int:
    """The epochs a checkpoint has completed (CheckpointError when it does not say)."""
    done = state.get("epoch")
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise CheckpointError(f"checkpoint {path} does not say how many epochs it completed: train again")
    return done


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files a killed checkpoint write left in a run directory (one writer per run)."""
    for stale in directory.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink(missing_ok=True)


def make_run_dir(config: TrainConfig, info: DistInfo) -> Path:
    """A new run directory under ``config.out_dir`` named after the time and model (made by rank 0, its name
    broadcast to the others)."""
    name = ""
    if info.is_main:
        safe = re.sub(r"[^\w.-]+", "-", config.model).strip("-")  # a spec's ':' and '/' make no folder names
        base = Path(config.out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
        path, n = base, 1
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            while True:  # mkdir is the check: two processes starting at once get two directories
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    n += 1
                    path = base.with_name(f"{base.name}-{n}")
        except OSError as exc:
            raise ConfigError(f"out_dir {config.out_dir}: cannot create {path} ({exc.strerror})", "out_dir") from None
        name = str(path)
    return Path(broadcast_str(name, info))
