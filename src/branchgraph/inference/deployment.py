"""A deployment read back: ``record.json`` says which engine wrote which files; the files are checked as data
(``branchgraph.inference.archive``) before an engine reads them, and ``load`` gives back a module whichever engine
won: fp32 NCHW images in, fp32 logits out."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError
from branchgraph.inference.archive import check_onnx, check_program
from branchgraph.inference.pt2e import FrozenCompiled, register_int8_ops
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule

RECORD = "record.json"
RECORD_FORMAT = 1
FILES = {"torch": ["model.pt2"], "compiled": ["model.pt2"], "onnxruntime": ["model.onnx"],
         "openvino": ["model.xml", "model.bin"]}


def _read_record(directory: Path) -> dict[str, Any]:
    try:
        record = json.loads((directory / RECORD).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{directory} has no {RECORD}: not a directory written by optimize with tune and "
                          "out") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {directory / RECORD} ({exc}): write it again (optimize with tune and "
                          "out)") from None
    if not isinstance(record, dict) or record.get("engine") not in FILES:
        raise ConfigError(f"{directory / RECORD} names no engine branchgraph knows; write it again")
    return record


def _file(directory: Path, name: str) -> Path:
    """``directory/name`` as a regular file inside the directory (never a link that leads elsewhere)."""
    path = directory / name
    if not path.exists():
        raise ConfigError(f"{directory} lacks {name}: write it again (optimize with tune and out)")
    if path.is_symlink() or not path.is_file() or path.resolve().parent != directory.resolve():
        raise ConfigError(f"refusing to load {path}: a deployment's files are regular files inside its directory, "
                          "not links")
    return path


def load(directory: str | Path, threads: int | None = None, record: dict[str, Any] | None = None) -> nn.Module:
    """The module ``save`` wrote into ``directory``, on ``threads`` threads (default: torch's). Its files are
    checked as data first; whatever an engine cannot load is one ConfigError line."""
    directory = Path(directory)
    record = record or _read_record(directory)
    engine, precision = record["engine"], record.get("precision", "fp32")
    files = [_file(directory, name) for name in FILES[engine]]
    try:
        if engine == "onnxruntime":
            check_onnx(files[0])
            return OnnxRuntimeModule(files[0], threads)
        if engine == "openvino":
            return OpenVinoModule(files[0], precision, threads)
        data = files[0].read_bytes()
        check_program(data, files[0])
        if precision == "int8":
            register_int8_ops()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.export.load(io.BytesIO(data)).module()  # the bytes that were checked, not the file again
    except ConfigError:
        raise
    except Exception as exc:  # a truncated or foreign file, or an engine's own error: one line
        raise ConfigError(f"{engine} cannot load {files[0]} ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else 'no message'}): "
                          "write it again (optimize with tune and out)") from None
    if engine == "compiled":
        return FrozenCompiled(net) if precision == "int8" else torch.compile(net, options={"freezing": True})
    return net
