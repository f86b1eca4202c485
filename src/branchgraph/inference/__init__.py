"""Inference engines the tuner compares (eager, reduced-precision weights, Inductor with freezing, ONNX Runtime,
OpenVINO) and the deployable result: ``load`` reads what ``branchgraph optimize --tune --out DIR`` wrote."""

from branchgraph.inference.deploy import load, save
from branchgraph.inference.runtimes import OnnxRuntimeModule, OpenVinoModule

__all__ = ["OnnxRuntimeModule", "OpenVinoModule", "load", "save"]
