"""Model weights on disk as safetensors (no code runs on load), written atomically."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load, load_model, save, save_file, save_model

from pare.errors import PareError
from pare.io import atomic_write


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``model``'s state to ``path``; returns the file's size in bytes."""
    path = Path(path)
    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))
    return path.stat().st_size


def load_weights_file(model: nn.Module, path: str | Path) -> nn.Module:
    """A stage's own saved weights into ``model`` (strict: every tensor, every shape)."""
    try:
        load_model(model, str(path), strict=True)
    except Exception as e:  # truncated header, wrong shapes, missing tensors
        raise PareError(
            f"{path}: cannot load these weights into the stage's model ({type(e).__name__}: "
            f"{str(e)[:300]}); the file is damaged or from another recipe; re-run without --resume"
        ) from None
    return model


XZ_MAGIC = b"\xfd7zXZ\x00"


def save_tensors(tensors: dict, path: str | Path, key: str, meta, compress: bool = False) -> int:
    """A safetensors file whose header carries ``meta`` (JSON) under ``key``: how pare's own
    formats (packed low-bit codes, bitmask-sparse weights) describe their tensors. With
    ``compress`` the whole file is entropy-coded (LZMA/xz, lossless): long runs of zero codes,
    the repetitive header and few distinct values shrink; ``load_tensors`` reads both forms."""
    metadata = {key: json.dumps(meta)}
    tensors, aliases = _unshared(tensors)
    if aliases:
        metadata[ALIASES] = json.dumps(aliases)
    if compress:
        data = lzma.compress(save(tensors, metadata=metadata), preset=9 | lzma.PRESET_EXTREME)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    else:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return Path(path).stat().st_size


def load_tensors(path: str | Path, key: str) -> tuple[dict, dict]:
    raw = Path(path).read_bytes()
    if raw.startswith(XZ_MAGIC):
        raw = lzma.decompress(raw)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    meta = json.loads((header.get("__metadata__") or {}).get(key, "null"))
    if meta is None:
        raise ValueError(f"{path} has no {key!r} header: not written by pare in this format")
    tensors = load(raw)
    for name, same in json.loads((header.get("__metadata__") or {}).get(ALIASES, "{}")).items():
        tensors[name] = tensors[same]
    return tensors, meta


ALIASES = "pare_aliases"  # header key: tensor names stored once under another name (tied weights)


def _unshared(tensors: dict) -> tuple[dict, dict[str, str]]:
    """Tensors that share memory (an LLM's token table tied to its output layer) stored once:
    safetensors refuses shared storage, and a copy would double the table on disk."""
    first: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for name, t in tensors.items():
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in first:
            aliases[name] = first[view]
        else:
            first[view] = name
            unique[name] = t
    return unique, aliases
