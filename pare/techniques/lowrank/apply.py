"""The ``lowrank`` technique: choose a rank per layer, factorize, fine-tune, optionally merge."""

from __future__ import annotations

import copy

import torch.nn as nn

from pare.cost import count_params
from pare.errors import ConfigError
from pare.graph.merge import merge_modules
from pare.progress import console
from pare.registry import register
from pare.selection import replace_module, select_layers
from pare.techniques.lowrank.config import LowRankConfig
from pare.techniques.lowrank.factorize import (
    Factorized,
    energy_rank,
    factorize,
    factorized_params,
    max_ranks,
    singular_values,
)

SENSITIVITY_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4)  # of the full rank, smallest first


def kind_of(layer: nn.Module, config: LowRankConfig) -> tuple[str | None, str]:
    """The factorization for ``layer``, or None and the reason it has none."""
    if isinstance(layer, nn.Linear):
        return "svd", ""
    if layer.groups != 1:
        return None, "grouped/depthwise convolution"
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return None, "padding given by name or not zero-padding"
    if layer.kernel_size == (1, 1):
        return "spatial", ""  # for a 1x1 convolution this is a plain SVD of its weight matrix
    return (None, "conv: none") if config.conv == "none" else (config.conv, "")


def lowrank(model: nn.Module, config: LowRankConfig, ctx):
    """Replace layers by products of thin layers (SVD, Tucker-2, spatial SVD)."""
    selected = select_layers(model, include=config.layers, exclude=config.exclude, key="layers")
    before = count_params(model)["params"]
    base = ctx.metric(model)
    rows, skipped = [], []
    for name, layer in selected.items():
        kind, reason = kind_of(layer, config)
        if kind is None:
            skipped.append({"layer": name, "reason": reason})
            continue
        full = max_ranks(layer, kind)
        ranks = _choose(model, name, layer, kind, full, config, ctx, base)
        original = layer.weight.numel()
        if ranks is None or factorized_params(layer, kind, ranks) >= original:
            why = (
                f"no rank that saves parameters keeps the validation score within max_drop={config.max_drop}"
                if ranks is None
                else f"rank {ranks} saves no parameters"
            )
            skipped.append({"layer": name, "reason": why})
            continue
        spectra = singular_values(layer, kind)
        kept = [float((s[:r] ** 2).sum() / (s**2).sum()) for s, r in zip(spectra, ranks)]
        replace_module(model, name, factorize(layer, kind, ranks).train(layer.training))
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "shape": "x".join(map(str, layer.weight.shape)),
                "ranks": ranks,
                "full_ranks": full,
                "energy_kept": min(kept),
                "weights_before": original,
                "weights_after": factorized_params(layer, kind, ranks),
            }
        )
    info = {
        "params_before": before,
        "params_after": count_params(model)["params"],
        "layers": rows,
        "factorized": {r["layer"]: {"kind": r["kind"], "ranks": r["ranks"]} for r in rows},
    }
    if skipped:
        info["skipped_layers"] = skipped
    if not rows:
        info["note"] = "no layer was factorized (see skipped layers); the model is unchanged"
        console.print(f"[yellow]  {ctx.name}: {info['note']}[/]")
    info["val_score_before_finetune"] = ctx.score(model)
    if config.finetune_epochs:
        overrides = {"lr": config.finetune_lr} if config.finetune_lr else {}
        info["history"] = ctx.fit(model, epochs=config.finetune_epochs, **overrides)
    info["val_drop"] = ctx.drop(base, ctx.metric(model))
    if rows and info["val_drop"] > config.warn_drop:
        info["warning"] = (
            f"lost {info['val_drop']:.2f} validation points (warn_drop={config.warn_drop}) after "
            f"{config.finetune_epochs} fine-tuning epochs; keep more of each layer (a higher energy, "
            f"or rank_by: sensitivity with max_drop) or fine-tune longer (finetune_epochs)"
        )
        console.print(f"[yellow]  {ctx.name}: {info['warning']}[/]")
    if config.merge:
        merge_modules(model, Factorized)
        info["params_after"] = count_params(model)["params"]
    return model, info


def _choose(model, name, layer, kind, full, config, ctx, base) -> list[int] | None:
    if config.rank_by == "rank":
        too_big = [f for f in full if config.rank > f]
        if too_big:
            raise ConfigError(
                f"rank: {config.rank} is larger than layer {name!r} allows (at most {min(full)} for its "
                f"{'x'.join(map(str, layer.weight.shape))} weight); lower rank or exclude the layer"
            )
        return [config.rank] * len(full)
    if config.rank_by == "energy":
        return [energy_rank(s, config.energy) for s in singular_values(layer, kind)]
    if config.rank_by == "ratio":
        budget = config.ratio * layer.weight.numel()
        fractions = sorted({r / max(full) for r in range(1, max(full) + 1)}, reverse=True)
        for f in fractions:  # the largest ranks within the budget, same fraction of each mode
            ranks = [max(1, round(f * m)) for m in full]
            if factorized_params(layer, kind, ranks) <= budget:
                return ranks
        return [1] * len(full)
    # sensitivity: the smallest rank whose factorization alone keeps validation accuracy
    for fraction in SENSITIVITY_FRACTIONS:
        ranks = [max(1, round(fraction * m)) for m in full]
        if factorized_params(layer, kind, ranks) >= layer.weight.numel():
            break
        trial = copy.deepcopy(model)
        replace_module(trial, name, factorize(layer, kind, ranks))
        if ctx.drop(base, ctx.metric(trial)) <= config.max_drop:
            return ranks
    return None


def restore(model: nn.Module, config: LowRankConfig, info: dict) -> nn.Module:
    """The factorized structure, for ``--resume`` (the weights are loaded afterwards)."""
    if config.merge:
        return model
    for name, spec in info["factorized"].items():
        replace_module(model, name, factorize(model.get_submodule(name), spec["kind"], spec["ranks"]))
    return model


register(
    "lowrank",
    LowRankConfig,
    restore=restore,
    search={"energy": (0.5, 0.99), "finetune_epochs": [0, 3], "order": 20},
)(lowrank)
