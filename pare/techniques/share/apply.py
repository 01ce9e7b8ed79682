"""The ``share`` technique: tie each layer's weights to few shared values, fine-tune those
values, and ship codes plus codebook (or hashed values) in pare's packed format."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
import torch.nn as nn

from pare.formats.codebook import hash_size, hash_tying
from pare.formats.packed import save_packed
from pare.formats.schemes import QuantizedWeight, WeightSpec
from pare.registry import register
from pare.selection import select_layers
from pare.techniques.share.config import ShareConfig
from pare.techniques.share.tying import TiedWeights, kmeans_tying, tie


def layer_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def share(model: nn.Module, config: ShareConfig, ctx):
    """Share weights within each layer (k-means codebook or hashing trick), fine-tune the shared values."""
    selected = select_layers(model, include=config.layers, exclude=config.exclude, key="layers")
    tied, rows = [], []
    for name, layer in selected.items():
        w = layer.weight
        seed = layer_seed(ctx.seed, name)
        if config.method == "kmeans":
            t = kmeans_tying(w, config.clusters, config.keep_zeros, seed)
        else:
            t = hash_tying(w.shape, hash_size(w.numel(), config.compression), seed)
        before = w.detach().clone()
        tie(w, t)
        tied.append((w, t))
        rel = float((w.detach() - before).norm() / before.norm().clamp(min=1e-12))
        rows.append(
            {
                "layer": name,
                "weights": w.numel(),
                "shared_values": t.size - (t.frozen is not None),
                "zeros_kept": int((t.codes == t.frozen).sum()) if t.frozen is not None else 0,
                "relative_error": rel,
                "seed": seed,
            }
        )
    info = {
        "method": config.method,
        "layers": rows,
        "val_score_before_finetune": ctx.score(model),
    }
    if config.finetune_epochs:
        overrides = {"lr": config.finetune_lr} if config.finetune_lr else {}
        info["history"] = ctx.fit(
            model, hooks=[TiedWeights(tied)], epochs=config.finetune_epochs, **overrides
        )
    return model, info


def export(model: nn.Module, config: ShareConfig, info: dict, stage_dir: Path, example) -> dict:
    """Codes bit-packed at the width their count needs, plus each layer's codebook (k-means), or
    only the stored values and a seed (hashing)."""
    packed = {}
    for row in info["layers"]:
        w = model.get_submodule(row["layer"]).weight.detach()
        if config.method == "kmeans":
            codebook, codes = torch.unique(w, return_inverse=True)
            spec = WeightSpec(scheme="codebook", bits=max(1, (len(codebook) - 1).bit_length()))
            packed[f"{row['layer']}.weight"] = (QuantizedWeight(w, codes, {"codebook": codebook}), spec)
        else:
            t = hash_tying(w.shape, hash_size(w.numel(), config.compression), row["seed"])
            values = tie(w.clone(), t)
            params = {"values": values, "seed": torch.tensor(row["seed"])}
            packed[f"{row['layer']}.weight"] = (QuantizedWeight(w, None, params), WeightSpec(scheme="hashed"))
    path = stage_dir / ("model.shared.safetensors" + (".xz" if config.entropy_coding else ""))
    save_packed(model, packed, path, entropy_coding=config.entropy_coding)
    return {"artifact": path, "runtime": "torch"}


register(
    "share", ShareConfig, export=export, search={"clusters": (4, 64), "finetune_epochs": [0, 2], "order": 80}
)(share)
