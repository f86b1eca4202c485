"""Inference engines the tuner compares (eager, reduced-precision weights, Inductor with freezing, ONNX Runtime,
OpenVINO) and the deployable result: ``load`` reads what ``optimize`` with ``tune`` and ``out`` wrote."""

from typing import Any

from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule

__all__ = ["OnnxRuntimeModule", "OpenVinoModule", "load", "save"]


def __getattr__(name: str) -> Any:
    """``load`` and ``save`` on first use: ``deploy`` needs the tuner's candidates, which need this package."""
    if name in ("load", "save"):
        from branchgraph.inference import deploy

        return getattr(deploy, name)
    raise AttributeError(f"module 'branchgraph.inference' has no attribute {name!r}")
