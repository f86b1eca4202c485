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
from branchgraph.training.config import TrainConfig
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
    """Load a checkpoint safely (``weights_only=True``); unreadable files raise CheckpointError."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}; it is corrupt or not ours") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a branchgraph checkpoint (format {FORMAT_VERSION})")
    return state


def make_run_dir(config: TrainConfig, info: DistInfo) -> Path:
    """A new run directory under ``config.out_dir`` named after the time and model (made by rank 0, its name
    broadcast to the others)."""
    name = ""
    if info.is_main:
        safe = re.sub(r"[^\w.-]+", "-", config.model).strip("-")  # a spec's ':' and '/' make no folder names
        base = Path(config.out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"out_dir {config.out_dir}: cannot create {path} ({exc.strerror})", "out_dir") from None
        name = str(path)
    return Path(broadcast_str(name, info))
