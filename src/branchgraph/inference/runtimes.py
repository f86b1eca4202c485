"""ONNX Runtime and OpenVINO as torch modules: an exported ONNX graph run by another engine, fp32 tensors in and
out, on as many threads as torch uses and with spinning thread pools off (a spinning pool takes the cores the next
timed variant needs). Both are optional (``pip install 'branchgraph[runtimes]'``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError

RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
INSTALL = "pip install 'branchgraph[runtimes]'"
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: what is not quantised runs in fp32


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, for sigaltstack; None where there is none to ask (not Linux or macOS)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


class _SignalStack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run OpenVINO with the thread's alternate signal stack as it was: its CPU plugin installs one of its own
    when it starts an engine and frees it when the engine goes, after which the next signal with a handler
    (Ctrl-C) crashed the process with SIGSEGV instead of raising KeyboardInterrupt."""
    libc = _libc()
    before = _SignalStack()
    known = libc is not None and libc.sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if known:
            now = _SignalStack()
            if libc.sigaltstack(None, ctypes.byref(now)) == 0 and (now.sp, now.flags) != (before.sp, before.flags):
                libc.sigaltstack(ctypes.byref(before), None)


def available(runtime: str) -> bool:
    """Whether ``runtime`` ("onnxruntime" or "openvino") can be imported here."""
    return importlib.util.find_spec(RUNTIMES[runtime]) is not None


def missing_note() -> str | None:
    """One line naming the runtimes that are not installed and what installs them, or None."""
    missing = [r for r in RUNTIMES if not available(r)]
    return f"{' and '.join(missing)} not installed: {INSTALL} to compare them" if missing else None


def require(runtime: str) -> None:
    """Raise a one-line ConfigError when ``runtime`` is not installed."""
    if not available(runtime):
        raise ConfigError(f"{runtime} is not installed: {INSTALL}")


class OnnxRuntimeModule(nn.Module):
    """An ONNX file run by ONNX Runtime's CPU provider with every graph optimisation, ``threads`` intra-op threads,
    one inter-op thread and no spinning."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        require("onnxruntime")
        import onnxruntime as ort

        self.path, self.threads = Path(path), threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.model_bytes = self.path.read_bytes()  # what a deployment writes, whether or not the file stays
        self.session = ort.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().float().contiguous().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class OpenVinoModule(nn.Module):
    """An ONNX file or OpenVINO IR (``.xml``) compiled by OpenVINO for the CPU at ``precision`` ("fp32" or "bf16",
    OpenVINO's inference precision hint; "int8": quantised by NNCF on ``calibration`` images first, or an IR
    quantised already), one stream of ``threads`` threads, latency mode, no core pinning."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None,
                 calibration: torch.Tensor | None = None) -> None:
        super().__init__()
        require("openvino")
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r} is not one of {', '.join(OPENVINO_PRECISIONS)}")
        self.path, self.precision, self.threads = Path(path), precision, threads or torch.get_num_threads()
        with keep_signal_stack():
            self.model = ov.Core().read_model(str(self.path))
            if precision == "int8" and calibration is not None:
                self.model = quantize_openvino(self.model, calibration)
            self.compiled = ov.Core().compile_model(self.model, "CPU", self.config())
            self.request = self.compiled.create_infer_request()

    def config(self) -> dict[str, Any]:
        """The CPU plugin properties this module compiles with."""
        return {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.precision], "ENABLE_CPU_PINNING": False}

    def save(self, path: str | Path) -> Path:
        """Write the model as OpenVINO IR (``path`` .xml and its .bin), weights kept in fp32."""
        import openvino as ov

        ov.save_model(self.model, str(path), compress_to_fp16=False)
        return Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: x.detach().float().contiguous().cpu().numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def quantize_openvino(model: Any, images: torch.Tensor) -> Any:
    """``model`` (an ``openvino.Model``) with int8 weights and activations, calibrated on ``images`` one at a time
    by NNCF's post-training quantisation (min-max ranges, its default preset for CPUs)."""
    import logging
    import os
    import sys

    os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch for its usage telemetry: nothing leaves this machine
    import nncf

    samples = [x[None].float().contiguous().numpy() for x in images]
    handlers = [h for h in logging.getLogger("nncf").handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(sys.stderr) for h in handlers]  # its log and progress bars off stdout (--json stays JSON)
    try:
        with contextlib.redirect_stdout(sys.stderr), keep_signal_stack():
            return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            if stream is not None:
                handler.setStream(stream)
