"""Model weights on disk as safetensors (no code runs on load), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from pare.io import atomic_write


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``model``'s state to ``path``; returns the file's size in bytes."""
    path = Path(path)
    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))
    return path.stat().st_size


def load_weights_file(model: nn.Module, path: str | Path) -> nn.Module:
    load_model(model, str(path), strict=True)
    return model


def save_tensors(tensors: dict, path: str | Path, key: str, meta) -> int:
    """A safetensors file whose header carries ``meta`` (JSON) under ``key``: how pare's own
    formats (packed low-bit codes, bitmask-sparse weights) describe their tensors."""
    import json

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={key: json.dumps(meta)}))
    return Path(path).stat().st_size


def load_tensors(path: str | Path, key: str) -> tuple[dict, dict]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(key, "null"))
    if meta is None:
        raise ValueError(f"{path} has no {key!r} header: not written by pare in this format")
    return load_file(str(path)), meta
