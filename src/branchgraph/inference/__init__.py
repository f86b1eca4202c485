"""Inference engines the tuner compares (eager, reduced-precision weights, Inductor with freezing, ONNX Runtime,
OpenVINO) and ``load``, which reads back what ``optimize`` with ``tune`` and ``out`` wrote
(``branchgraph.deploy``)."""

from branchgraph.inference.deployment import load
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule

__all__ = ["OnnxRuntimeModule", "OpenVinoModule", "load"]
