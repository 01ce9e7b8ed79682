"""Artifacts as shipped: safetensors weights, ONNX graphs run in ONNX Runtime."""

from pare.export.onnx import export_onnx, onnx_latency, onnx_predict, onnx_runner, ort_session
from pare.export.weights import load_weights_file, save_weights

__all__ = [
    "export_onnx",
    "onnx_latency",
    "onnx_predict",
    "onnx_runner",
    "ort_session",
    "save_weights",
    "load_weights_file",
]
