"""The tuned choice as files a server can load: a ``torch.export`` program (``model.pt2``; compiled again with
freezing on load when Inductor won), an ``.onnx`` for ONNX Runtime, or OpenVINO IR (``model.xml``/``.bin``), with
``record.json`` saying which engine, how it was verified and what each candidate measured;
``branchgraph.inference.load`` reads it back.

A deployment is written into a hidden sibling folder, loaded back and verified there, and only then swapped in for
the old one by rename: a rejected, failed or interrupted write leaves the old deployment as it was. Loading checks
the files as data first (``branchgraph.inference.archive``): nothing in them is unpickled or run as Python."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError
from branchgraph.inference.deployment import FILES, RECORD, RECORD_FORMAT, load
from branchgraph.inference.engines import Serving
from branchgraph.inference.int8 import Calibration, top1
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule
from branchgraph.passes.pipeline import optimize
from branchgraph.passes.verification import output_error
from branchgraph.tune import TuneResult, serving_module
from branchgraph.tune_checks import checked_images, output_limit


def save(model: nn.Module, example: torch.Tensor, tuning: TuneResult, directory: str | Path,
         served: nn.Module | None = None, calibration: Calibration | None = None) -> Path:
    """Write ``tuning``'s choice for ``model`` into ``directory`` (from ``served``, the module already built for it,
    so that what is deployed is what the caller holds; else built here), load it back, check its outputs on
    ``example`` against fp32 eager (the candidate's tolerance) and write ``record.json``; returns the record's
    path. An int8 choice is built with ``calibration`` and its accuracy recorded. The files replace an older
    deployment in ``directory`` only once they are verified."""
    directory = check_target(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_debris(directory)
        staged = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.partial-{os.getpid()}-"))
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory} ({exc.strerror}): choose another out directory",
                          param="out") from None
    try:
        _write_verified(model, example, tuning, staged, served, calibration)
        staged.chmod(0o755)
        _publish(staged, directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return directory / RECORD


def check_target(directory: str | Path) -> Path:
    """``directory`` as a place ``save`` may write: new, empty, or a deployment it wrote (which it replaces); a
    folder of other files is never replaced."""
    directory = Path(directory)
    if directory.exists() and not (directory.is_dir() and (not any(directory.iterdir())
                                                          or (directory / RECORD).is_file())):
        raise ConfigError(f"{directory} exists and is not a deployment written by branchgraph: choose a new or "
                          "empty out directory", param="out")
    return directory


def _write_verified(model: nn.Module, example: torch.Tensor, tuning: TuneResult, directory: Path,
                    served: nn.Module | None, calibration: Calibration | None = None) -> None:
    """The chosen candidate's files (from ``served``, the module built for it, when given) and ``record.json`` in
    ``directory``, loaded back and checked against ``model``."""
    cand = tuning.chosen
    if served is None:  # passes verified here, as optimize does for the module it returns
        served = (optimize(model, example[:2], passes=cand.pass_list(), mode="eval")[0] if cand.passes is not None
                  else serving_module(model, example, "eval", cand, calibration))
    if isinstance(served, OnnxRuntimeModule):
        (directory / "model.onnx").write_bytes(served.model_bytes)
    elif isinstance(served, OpenVinoModule):
        served.save(directory / "model.xml")
    else:
        net = getattr(served, "_orig_mod", served)  # a compiled module: its program is exported, compiled on load
        net = net if isinstance(net, Serving) else Serving(net.eval())
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
    checked = checked_images(cand.precision, example, calibration)
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(checked)
        try:
            loaded = load(directory, record={"engine": cand.engine, "precision": cand.precision})(checked)
        except Exception as exc:  # the written files do not run: one line, never a half-checked deployment
            raise ConfigError(f"the written {cand.name} does not run when loaded back "
                              f"({str(exc).strip().splitlines()[0][:160]}); limit engines to another one",
                              param="engines") from None
    error = output_error(loaded, reference)
    limit = output_limit(cand.precision)
    if not error <= limit:
        raise ConfigError(f"the written {cand.name} gives outputs {error:.2e} off fp32 normwise (> {limit:g}); "
                          "nothing deployed, the out directory is as it was")
    record = {"format": RECORD_FORMAT, "engine": cand.engine, "precision": cand.precision, "candidate": cand.name,
              "files": FILES[cand.engine], "input_shape": list(example.shape), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "verification": {"output_error_normwise": error, "limit": limit,
                                                           "checked_on": list(checked.shape)},
              "tuning": tuning.to_dict()}
    if cand.precision == "int8" and calibration is not None:
        record["accuracy"] = _accuracy(model, load(directory, record=record), tuning, calibration)
    (directory / RECORD).write_text(json.dumps(record, indent=1, default=str) + "\n")


def _accuracy(model: nn.Module, deployed: nn.Module, tuning: TuneResult, calibration: Calibration
              ) -> dict[str, Any]:
    """Top-1 of fp32 eager and of the deployed int8 model on the test split (the validation split where the data
    has none), with the drop on the validation split that accepted it."""
    split, (x, y) = ("test", calibration.test) if calibration.test is not None else ("val", calibration.val)
    reference = top1(copy.deepcopy(model).eval(), x, y)
    return {"split": split, "images": len(x), "reference": reference, "chosen": top1(deployed, x, y),
            "validation_drop": (tuning.accuracy["fp32 eager"] - tuning.accuracy[tuning.chosen.name]
                                if {"fp32 eager", tuning.chosen.name} <= set(tuning.accuracy) else None),
            "max_accuracy_drop": calibration.max_drop, "calibration": calibration.describe()}


def _remove_debris(directory: Path) -> None:
    """Delete the staging folders of writes to ``directory`` whose process is gone (killed mid-write)."""
    for stale in directory.parent.glob(f".{directory.name}.partial-*"):
        pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        pass
    return True


def _publish(staged: Path, directory: Path) -> None:
    """Put ``staged`` in place of ``directory``: one atomic exchange where the system has it (Linux renameat2), else
    two renames; the old deployment is deleted only once the new one stands."""
    if not directory.exists():
        os.rename(staged, directory)
        return
    if _exchange(staged, directory):
        shutil.rmtree(staged, ignore_errors=True)  # it holds the old deployment now
        return
    aside = staged.with_name(staged.name + "-old")
    os.rename(directory, aside)
    os.rename(staged, directory)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where that is not available."""
    with contextlib.suppress(OSError, AttributeError):
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_fdcwd, rename_exchange = -100, 2
        return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return False


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
