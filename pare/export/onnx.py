"""ONNX export (batch dimension left dynamic) and execution in ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pare.cost.profile import latency_table
from pare.errors import UnsupportedModelError
from pare.io import atomic_write


@contextlib.contextmanager
def quiet_export():
    """The exporter logs every step and warns about optional packages; keep the terminal clean."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # onnxscript's constant folding warns about shapes it cannot fold
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> int:
    """Export ``model`` for inputs shaped like ``example``; returns the file's bytes."""
    model.eval()
    path = Path(path)
    if example.shape[0] == 1:  # torch.export fixes dimensions of size 1 (Hugging Face models' batch):
        example = torch.cat([example, example])  # trace two rows so the batch stays dynamic

    def write(tmp: str) -> None:
        with quiet_export():
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                external_data=False,
                verbose=False,
            )

    try:
        atomic_write(path, write)
    except Exception as e:
        raise UnsupportedModelError(
            f"ONNX export failed for {type(model).__name__}: {type(e).__name__}: {e}"
        ) from None
    return path.stat().st_size


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session using as many threads as torch does, so timings compare.
    ``spinning=False`` stops idle worker threads from busy-waiting: needed when two sessions
    are timed alternately, or one would steal the other's cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_runner(session):
    """The session as a function of a torch batch (float inputs as float32, token ids as int64),
    giving its first output. A causal LM exported with its KV cache (``export/onnx_lm``) gets an
    all-ones attention mask and an empty cache: whole windows, scored at once."""
    first, *rest = session.get_inputs()
    output = [session.get_outputs()[0].name]  # not the cache it also returns

    def run(x: torch.Tensor) -> np.ndarray:
        x = x.numpy()
        feed = {first.name: x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)}
        for i in rest:
            if i.name == "attention_mask":
                feed[i.name] = np.ones(x.shape, dtype=np.int64)
            elif i.name.startswith("past."):  # (batch, kv heads, 0 tokens, head dim)
                feed[i.name] = np.zeros((len(x), int(i.shape[1]), 0, int(i.shape[3])), dtype=np.float32)
        return session.run(output, feed)[0]

    return run


def onnx_predict(session, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    run = onnx_runner(session)
    return np.concatenate(
        [run(torch.from_numpy(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
    )


def onnx_latency(session, sample: torch.Tensor, batch_sizes, repeats: int = 50) -> dict:
    return latency_table(onnx_runner(session), sample, batch_sizes, repeats)
