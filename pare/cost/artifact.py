"""What a stage ships, and what it costs: the file on disk, the runtime that runs it, and the
same measurements for every stage (torch profile, plus the model in ONNX Runtime side by side)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn

from pare.cost.profile import profile
from pare.errors import PareError
from pare.export import export_onnx, onnx_latency, onnx_runner, ort_session
from pare.progress import console


@dataclass(frozen=True)
class Artifact:
    """One fold's shipped model: ``path`` is what a user deploys (safetensors weights, an int8
    ONNX graph, a packed file), run by ``runtime``; ``weights`` is the safetensors file that
    ``--resume`` loads back (the same file when the stage ships plain weights)."""

    path: Path
    runtime: str  # "torch" or "onnxruntime"
    weights: Path

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def stage_cost(
    model: nn.Module,
    artifact: Artifact,
    task,
    test,
    torch_outputs: np.ndarray,
    shipped_outputs: np.ndarray,
    *,
    latency_batch: int,
    repeats: int,
    onnx: bool,
) -> dict:
    """Torch cost of ``model``; its ONNX Runtime latency and agreement with torch (the stage's own
    ONNX artifact, else an fp32 export written beside the weights when ``onnx``); and the bytes
    of every file, ``size_bytes`` being the artifact's."""
    sample = task.inputs(test.X[:latency_batch])  # real inputs, repeated to fill a batch
    cost = profile(model, sample, batch_size=latency_batch, repeats=repeats)
    files = {artifact.weights.name: artifact.weights.stat().st_size}
    sizes = sorted({1, latency_batch})
    shipped = artifact.runtime == "onnxruntime"
    onnx_path = (
        artifact.path if shipped else _fp32_onnx(model, sample[:1], artifact.weights.parent, cost, onnx)
    )
    if onnx_path is not None:
        session = ort_session(onnx_path)
        files[onnx_path.name] = onnx_path.stat().st_size
        cost["latency"]["onnxruntime"] = onnx_latency(session, sample, sizes, repeats)
        ort = shipped_outputs if shipped else task.outputs(onnx_runner(session), test)
        # ONNX Runtime against the torch model (for quantized stages, pare's simulation of it)
        cost.update(task.agreement(ort, torch_outputs, prefix="onnx_"))
    cost["files"] = files
    if artifact.path != artifact.weights:
        files.setdefault(artifact.path.name, artifact.bytes)
        cost["runtime"] = artifact.runtime
        if shipped:
            ort = cost["latency"]["onnxruntime"]
            cost["latency_ms_p50"] = ort["batch_1"]["p50"]
            cost["latency_ms_p95"] = ort["batch_1"]["p95"]
            cost["throughput_per_s"] = ort[f"batch_{sizes[-1]}"]["throughput_per_s"]
    cost["size_bytes"] = files[artifact.path.name]
    return cost


def _fp32_onnx(model, example, folder: Path, cost: dict, enabled: bool) -> Path | None:
    """The model exported to fp32 ONNX for a side-by-side timing (None: off, or not exportable)."""
    if not enabled:
        return None
    path = folder / "model.onnx"
    try:
        export_onnx(model, example, path)
    except PareError as e:
        console.print(f"[yellow]  ONNX Runtime timing skipped: {e}[/]")
        cost["onnx_error"] = str(e)
        return None
    return path
