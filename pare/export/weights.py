"""Model weights on disk as safetensors (no code runs on load), written atomically."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_model, save_model

from pare.io import atomic_write


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``model``'s state to ``path``; returns the file's size in bytes."""
    path = Path(path)
    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))
    return path.stat().st_size


def load_weights_file(model: nn.Module, path: str | Path) -> nn.Module:
    load_model(model, str(path), strict=True)
    return model
