"""Bitmask-sparse weights: a mostly-zero tensor stored as one bit per weight plus its non-zero
values, in pare's safetensors container."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pare.export.weights import load_tensors, save_tensors


def save_sparse(model: nn.Module, path: Path, min_sparsity: float = 0.25) -> int:
    """Tensors at least ``min_sparsity`` zero are stored as a bitmask (1 bit per weight) plus the
    non-zero values; the rest as they are. Returns the file's bytes."""
    tensors, meta = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        zeros = float((t == 0).float().mean()) if t.is_floating_point() and t.numel() else 0.0
        if zeros >= min_sparsity:
            mask = (t != 0).flatten().numpy()
            tensors[f"{name}.mask"] = torch.from_numpy(np.packbits(mask))
            tensors[f"{name}.values"] = t.flatten()[torch.from_numpy(mask)]
            meta[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            tensors[name] = t
    return save_tensors(tensors, path, "pare_sparse", meta)


def load_sparse(model: nn.Module, path: Path) -> nn.Module:
    tensors, meta = load_tensors(path, "pare_sparse")
    state = {}
    for name, value in model.state_dict().items():
        if name in meta:
            n = int(np.prod(meta[name]["shape"]))
            mask = torch.from_numpy(np.unpackbits(tensors[f"{name}.mask"].numpy(), count=n).astype(bool))
            dense = torch.zeros(n, dtype=value.dtype)
            dense[mask] = tensors[f"{name}.values"]
            state[name] = dense.reshape(meta[name]["shape"])
        else:
            state[name] = tensors[name]
    model.load_state_dict(state)
    return model
