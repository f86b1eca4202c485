"""The tuned choice as files a server can load: a ``torch.export`` program (``model.pt2``; compiled again with
freezing on load when Inductor won), an ``.onnx`` for ONNX Runtime, or OpenVINO IR (``model.xml``/``.bin``), with
``record.json`` saying which engine, how it was verified and what each candidate measured. ``load`` gives back a
module: fp32 NCHW images in, fp32 logits out."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from branchgraph.candidates import DTYPES
from branchgraph.errors import ConfigError
from branchgraph.inference.engines import Serving, export_for_runtimes
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule

if TYPE_CHECKING:
    from branchgraph.tune import TuneResult

RECORD = "record.json"
RECORD_FORMAT = 1
FILES = {"torch": ["model.pt2"], "compiled": ["model.pt2"], "onnxruntime": ["model.onnx"],
         "openvino": ["model.xml", "model.bin"]}


def serving_module(model: nn.Module, example: torch.Tensor, tuning: TuneResult) -> nn.Module:
    """The chosen candidate of ``tuning`` as an uncompiled module with the original's interface (passes applied
    and verified by ``optimize`` where the candidate has them)."""
    from branchgraph.passes.pipeline import optimize

    cand = tuning.chosen
    dtype = DTYPES[cand.precision] if cand.weights else None
    if cand.passes is not None:
        net, _ = optimize(model, example[:2], passes=cand.pass_list(), mode="eval")
        return Serving(net.eval())
    net = copy.deepcopy(model).eval()
    if cand.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Serving(net.to(dtype) if dtype else net, cand.channels_last, autocast=cand.autocast, weights=dtype)


def save(model: nn.Module, example: torch.Tensor, tuning: TuneResult, directory: str | Path) -> Path:
    """Write ``tuning``'s choice for ``model`` into ``directory``, load it back, check its outputs on ``example``
    against fp32 eager (the candidate's tolerance) and write ``record.json``; returns the record's path."""
    from branchgraph.passes.pipeline import FP32_TOLERANCE, REDUCED_PRECISION_TOLERANCE

    cand, directory = tuning.chosen, Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory} ({exc.strerror}): choose another out directory",
                          param="out") from None
    if cand.engine in ("onnxruntime", "openvino"):
        onnx_path = export_for_runtimes(model, example, directory)
        if cand.engine == "openvino":
            OpenVinoModule(onnx_path, cand.precision).save(directory / "model.xml")
            onnx_path.unlink()
    else:
        net = serving_module(model, example, tuning)
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        except Exception as exc:  # a model torch.export cannot take: one line, nothing half-written kept
            raise ConfigError(f"torch.export cannot export the chosen {cand.name} "
                              f"({str(exc).strip().splitlines()[0][:160]}); limit engines to onnxruntime or "
                              "openvino, or use the module from Python", param="engines") from None
        _drop_dtype_asserts(program.graph_module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the archive's note about weights that are not on the CPU
            torch.export.save(program, str(directory / "model.pt2"))
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(example)
        try:
            loaded = load(directory, record={"engine": cand.engine, "precision": cand.precision})(example)
        except Exception as exc:  # the written files do not run: one line, never a half-checked deployment
            raise ConfigError(f"the written {cand.name} does not run when loaded back "
                              f"({str(exc).strip().splitlines()[0][:160]}); limit engines to another one",
                              param="engines") from None
    reference = (reference[0] if isinstance(reference, tuple) else reference).float()
    error = ((loaded - reference).norm() / reference.norm().clamp_min(1e-30)).item()
    limit = REDUCED_PRECISION_TOLERANCE if cand.precision != "fp32" else FP32_TOLERANCE
    if not error <= limit:
        raise ConfigError(f"the written {cand.name} gives outputs {error:.2e} off fp32 normwise (> {limit:g}); "
                          "nothing to deploy")
    record = {"format": RECORD_FORMAT, "engine": cand.engine, "precision": cand.precision, "candidate": cand.name,
              "files": FILES[cand.engine], "input_shape": list(example.shape), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "verification": {"output_error_normwise": error, "limit": limit,
                                                           "checked_on": list(example.shape)},
              "tuning": tuning.to_dict()}
    path = directory / RECORD
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def _drop_dtype_asserts(program: torch.fx.GraphModule) -> None:
    """Remove the dtype checks torch.export puts after casts: under CPU autocast it records the dtype a cast's
    input had while tracing (fp32) where the program then computes bf16, and the check fails at run time. The
    loaded program's outputs are compared with the original's before anything is deployed."""
    for module in program.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in list(module.graph.nodes):
                if node.target is torch.ops.aten._assert_tensor_metadata.default:
                    module.graph.erase_node(node)
            module.recompile()


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


def load(directory: str | Path, threads: int | None = None, record: dict[str, Any] | None = None) -> nn.Module:
    """The module ``save`` wrote into ``directory``, on ``threads`` threads (default: torch's)."""
    directory = Path(directory)
    record = record or _read_record(directory)
    engine, precision = record["engine"], record.get("precision", "fp32")
    missing = [f for f in FILES[engine] if not (directory / f).exists()]
    if missing:
        raise ConfigError(f"{directory} lacks {', '.join(missing)}: write it again (optimize with tune and out)")
    if engine == "onnxruntime":
        return OnnxRuntimeModule(directory / "model.onnx", threads)
    if engine == "openvino":
        return OpenVinoModule(directory / "model.xml", precision, threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.export.load(str(directory / "model.pt2")).module()
    except Exception as exc:  # a truncated or foreign file: one line
        raise ConfigError(f"cannot load {directory / 'model.pt2'} ({str(exc).strip().splitlines()[0][:120]}): "
                          "write it again (optimize with tune and out)") from None
    return torch.compile(net, options={"freezing": True}) if engine == "compiled" else net
