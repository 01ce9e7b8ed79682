"""ONNX Runtime's own quantizers as peers of pare's int8 (``quantization.py``, ``vision.py``):
each runs on the same exported fp32 graph and the same calibration batches as pare, and the
accuracy of any classifier's probabilities with its bootstrap interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pare.metrics import bootstrap_cis


def preprocessed(fp32: Path, out: Path) -> Path:
    """``fp32`` after ONNX Runtime's ``quant_pre_process`` (shape inference, graph fusions): what
    its quantizers expect."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(fp32), str(out))
    return out


def quantize_static(pre: Path, calib: list[torch.Tensor], out: Path) -> Path:
    """ONNX Runtime's static int8 (QDQ, per-channel int8 weights, uint8 activations: the layout
    pare ships) calibrated on ``calib``, the batches pare calibrated on."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": b.numpy()} for b in calib])

        def get_next(self):
            return next(self.batches, None)

    ort_quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def accuracy_with_ci(y: np.ndarray, proba: np.ndarray, n_boot: int) -> dict:
    ci = bootstrap_cis(y, proba, n_boot=n_boot, metrics=("accuracy",))["accuracy_ci95"]
    return {"accuracy": float((proba.argmax(1) == y).mean()), "accuracy_ci95": ci}
