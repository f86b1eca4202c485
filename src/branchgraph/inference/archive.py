"""What a deployment's files may hold before any engine reads them: a ``torch.export`` archive with tensors as raw
bytes, sample inputs that load with ``weights_only=True`` and a graph of torch operators only (torch's loader
unpickles payloads marked ``use_pickle``, falls back to unpickling sample inputs and resolves any ``torch.*`` name
as a graph target); an ONNX file without external data. Anything else is refused as one ConfigError line."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from branchgraph.errors import ConfigError

# archive entries torch.export.save writes for a program of tensors (below the archive's one top folder)
ENTRIES = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                     r"|models/\w+\.json|data/sample_inputs/\w+\.pt|data/(weights|constants)/\w+_config\.json"
                     r"|data/weights/weight_\d+|data/constants/tensor_\d+)")
# graph targets: torch operators (int8's quantize/dequantize too) and the integer arithmetic of symbolic batch sizes
OPERATOR_FUNCTIONS = {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "eq", "ne",
                      "lt", "le", "gt", "ge", "and_", "or_", "not_", "abs"}
TARGET = re.compile(r"torch\.ops\.(aten|prims|higher_order|quantized_decomposed)\.\w+(\.\w+)?"
                    r"|torch\.(sym_\w+|_sym_sqrt)|math\.(ceil|floor|trunc|sqrt)"
                    r"|_operator\.(" + "|".join(OPERATOR_FUNCTIONS) + ")")
REFUSED_OPERATORS = {"from_file"}  # aten operators that read files named in the graph


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"refusing to load {path}: {why}; deployments hold tensors and torch operators only, write "
                       "it again (optimize with tune and out)")


def _targets(value: Any) -> Iterator[str]:
    """Every string under a ``target`` key of a serialized graph."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "target" and isinstance(item, str):
                yield item
            else:
                yield from _targets(item)
    elif isinstance(value, list):
        for item in value:
            yield from _targets(item)


def _allowed(target: str) -> bool:
    parts = target.split(".")
    return bool(TARGET.fullmatch(target)) and not (len(parts) > 3 and parts[3] in REFUSED_OPERATORS)


def check_program(data: bytes, path: Path) -> None:
    """Raise ConfigError unless ``data`` is a torch.export archive that loads without unpickling anything and
    whose graph calls torch operators only."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _refuse(path, f"not a torch.export archive ({type(exc).__name__})") from None
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or len(set(names)) != len(names):
        raise _refuse(path, "its entries are not one archive folder of unique names")
    top = tops.pop() + "/"
    odd = [name for name in names if not ENTRIES.fullmatch(name[len(top):])]
    if odd:
        raise _refuse(path, f"it holds {odd[0][len(top):]!r}, which torch would load as pickled Python objects or "
                      "compiled code")
    try:
        for name in names:
            if name.endswith("_config.json"):
                entries = json.loads(archive.read(name)).get("config", {})
                if any(not isinstance(e, dict) or e.get("use_pickle") is not False for e in entries.values()):
                    raise _refuse(path, "it marks tensors as pickled Python objects")
            elif name.endswith(".pt"):
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            elif name.startswith(top + "models/"):
                for target in _targets(json.loads(archive.read(name))):
                    if not _allowed(target):
                        raise _refuse(path, f"its graph calls {target[:80]!r}, which is not a torch operator")
    except ConfigError:
        raise
    except Exception as exc:  # unreadable JSON, or sample inputs that only an unsafe load would read
        raise _refuse(path, f"{type(exc).__name__} reading its entries") from None


def check_onnx(path: Path) -> None:
    """Raise ConfigError when an ONNX file keeps tensors in external files (they could name any file)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise _refuse(path, f"not an ONNX model ({type(exc).__name__})") from None
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise _refuse(path, "it reads tensors from external files")
