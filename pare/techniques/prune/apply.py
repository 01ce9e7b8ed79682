"""The ``prune`` technique: score, remove (in steps), fine-tune, and record what was reached."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.nn as nn

from pare.cost import count_flops, count_params
from pare.errors import ConfigError, UnsupportedModelError
from pare.formats.sparse import save_sparse
from pare.graph.surgery import channel_groups, reshape, shapes, shrink, verify
from pare.graph.tracing import trace
from pare.registry import register
from pare.selection import select_layers
from pare.tasks import get_task
from pare.techniques.prune import criteria, oneshot, transformer
from pare.techniques.prune.blocks import block_influence, drop, residual_blocks
from pare.techniques.prune.config import PruneConfig
from pare.techniques.prune.hf_config import hf_models, sync_configs
from pare.techniques.prune.unstructured import (
    KeepMasks,
    SparsityPenalty,
    n_m_masks,
    threshold_masks,
)
from pare.training import batches
from pare.training.calibration import calibration_batches

SUPPORTED = (nn.Linear, nn.Conv2d)


def schedule(step: int, steps: int, amount: float, kind: str) -> float:
    """The fraction removed after ``step`` of ``steps``: linear, or cubic (Zhu & Gupta 2017:
    fast at first, gently at the end, when the network has least slack)."""
    t = step / steps
    return amount * (t if kind == "linear" else 1 - (1 - t) ** 3)


def _score_batches(ctx, config):
    gen = torch.Generator().manual_seed(ctx.seed)
    out = []
    for i, batch in enumerate(batches(ctx.split.train, 64, gen)):
        if i >= config.score_batches:
            break
        out.append(batch)
    return out


def prune(model: nn.Module, config: PruneConfig, ctx):
    """Prune weights or whole channels with a chosen criterion and schedule."""
    torch.manual_seed(ctx.seed)  # the random criterion and any sampling: reproducible per run
    example = get_task(ctx.split.kind).inputs(ctx.split.train.X[:2])
    selected = select_layers(
        model, include=config.layers, exclude=config.exclude, types=SUPPORTED, key="layers"
    )
    before = {"params": count_params(model)["params"], "macs": count_flops(model, example[:1]) // 2}
    info: dict = {
        "method": config.method,
        "criterion": config.criterion,
        "target": config.target,
        "amount": config.amount,
    }
    if config.regularization != "none":
        weights = [m.weight for m in selected.values()]
        penalty = SparsityPenalty(weights, config.regularization, config.reg_strength)
        info["regularization_history"] = ctx.fit(model, hooks=[penalty], epochs=config.reg_epochs).to_dict()
    history = None
    masks: dict[str, torch.Tensor] = {}
    originals: dict[tuple, int] = {}
    skipped: Counter = Counter()
    for step in range(1, config.steps + 1):
        fraction = schedule(step, config.steps, config.amount, config.schedule)
        if config.method == "structured":
            skipped = _structured_step(
                model, config, ctx, fraction, originals, set(selected), example, before
            )
        elif config.method in ("heads", "ffn"):
            info["units"] = _unit_step(model, config, ctx, fraction, originals, set(selected))
            _sync(model, info)
        elif config.method == "blocks":
            info["dropped_blocks"], info["block_scores"] = _drop_blocks(
                model, config, ctx, fraction, example, before
            )
            _sync(model, info)
        else:
            masks = _mask_step(model, config, ctx, fraction, selected, info)
        if config.recalibrate_bn:
            recalibrate_batchnorm(model, _score_batches(ctx, config))
        if config.finetune_epochs:
            hooks = [KeepMasks([(selected[n].weight, m) for n, m in masks.items()])] if masks else []
            overrides = {"lr": config.finetune_lr} if config.finetune_lr else {}
            history = ctx.fit(model, hooks=hooks, epochs=config.finetune_epochs, **overrides)
    info.update(_reached(model, config, selected, masks, example, before))
    if skipped:
        info["skipped_groups"] = [{"reason": r, "channels": n} for r, n in skipped.most_common()]
    info["layers"] = _layer_table(model, selected, masks)
    if config.reshapes:
        info["shapes"] = shapes(model)
    if history is not None:
        info["history"] = history
    return model, info


def _sync(model, info: dict) -> None:
    """A Hugging Face model's config made to describe the smaller model, at once (its forward
    pass reads it); ``info["config_changes"]``: ``{key: [original, now]}`` over all steps."""
    for key, (was, now) in sync_configs(model).items():
        info.setdefault("config_changes", {}).setdefault(key, [was, now])[1] = now


def _reached(model, config: PruneConfig, selected: dict, masks: dict, example, before: dict) -> dict:
    """What the stage removed (params, MACs, zeros) and, when short of the target, a note."""
    after = {"params": count_params(model)["params"], "macs": count_flops(model, example[:1]) // 2}
    nonzero = count_params(model)["nonzero_params"]
    info = {
        "params_before": before["params"],
        "params_after": after["params"],
        "nonzero_after": nonzero,
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "macs_removed": 1 - after["macs"] / before["macs"],
        "params_removed": 1 - after["params"] / before["params"],
        "weights_zero": 1 - nonzero / before["params"],
    }
    selected_zero = sum(int((m.weight == 0).sum()) for m in selected.values()) / sum(
        m.weight.numel() for m in selected.values()
    )
    info["selected_weights_zero"] = selected_zero
    reached = {
        "sparsity": selected_zero if config.method != "structured" else None,
        "macs": info["macs_removed"],
        "params": info["params_removed"],
    }[config.target]
    if config.method == "n_m":
        left_out = [n for n in selected if n not in masks]
        if left_out:
            info["skipped_layers"] = [
                {"layer": n, "reason": f"inputs per output not a multiple of m={config.m}"} for n in left_out
            ]
        reached = None  # N:M fixes the ratio per group, not per model
    if reached is not None and reached < config.amount - 0.02:
        info["note"] = (
            f"target {config.target} -{config.amount:.0%} not reachable with the prunable layers; "
            f"reached -{reached:.1%}"
        )
    return info


def _unit_step(model, config, ctx, fraction, originals, selected) -> dict[str, dict]:
    """Remove ``fraction`` of the original attention heads (or FFN neurons): the same share in
    every layer, or the lowest scores over all layers (``scope: global``); one always stays."""
    find = transformer.attention_heads if config.method == "heads" else transformer.ffn_neurons
    layers = [u for u in find(model) if u.output in selected]
    if not layers:
        what = "attention module" if config.method == "heads" else "feed-forward block"
        raise UnsupportedModelError(
            f"prune: method {config.method!r} found no {what} of a layout pare knows among the selected layers "
            f"(zoo transformer/gpt, Hugging Face BERT-style and Llama-family; GPT-2 feed-forward only); "
            f"use method: structured for other models"
        )
    if config.scope == "global" and hf_models(model):
        raise ConfigError(
            f"scope: 'global' leaves the layers of a Hugging Face model with different {config.method} counts, "
            f"which its config cannot describe; use scope: layer"
        )
    grads = None
    if config.criterion in criteria.NEEDS_GRADIENTS:
        modules = {m for u in layers for m, _, _ in u.slices(model, 0)}
        grads = criteria.gradients(model, list(modules), _score_batches(ctx, config), ctx.split.kind)
    norms = None
    if config.criterion == "wanda":
        outputs = [model.get_submodule(u.output) for u in layers]
        norms = criteria.input_norms(model, outputs, calibration_batches(ctx, config))
    scores = {u.name: transformer.unit_scores(model, u, config.criterion, grads, norms) for u in layers}
    for u in layers:
        originals.setdefault(("units", u.name), u.count(model))
    keep: dict[str, list[int]] = {}
    if config.scope == "layer":
        for u in layers:
            n = originals[("units", u.name)]
            kept = max(1, _rounded(n - round(fraction * n), config.round_to, n))
            keep[u.name] = scores[u.name].argsort(descending=True)[:kept].tolist()
    else:
        total = sum(originals[("units", u.name)] for u in layers)
        remove = round(fraction * total) - (total - sum(len(s) for s in scores.values()))
        ranked = sorted((float(s), u.name, i) for u in layers for i, s in enumerate(scores[u.name]))
        dropped = {u.name: set() for u in layers}
        for _, name, i in ranked:
            if remove <= 0:
                break
            if len(scores[name]) - len(dropped[name]) > 1:  # the last unit of a layer stays
                dropped[name].add(i)
                remove -= 1
        keep = {u.name: [i for i in range(len(scores[u.name])) if i not in dropped[u.name]] for u in layers}
    for u in layers:
        if len(keep[u.name]) < u.count(model):
            u.keep(model, keep[u.name])
    return {u.name: {"before": originals[("units", u.name)], "after": u.count(model)} for u in layers}


def _rounded(count: int, multiple: int, limit: int) -> int:
    return min(limit, -(-count // multiple) * multiple) if multiple > 1 else count


@torch.no_grad()
def _drop_blocks(model, config, ctx, fraction, example, before) -> tuple[list[str], list[dict]]:
    """Drop the residual blocks that do least: the lowest block influence (``criterion:
    cosine``, one pass over calibration windows), or else the smallest loss of validation score
    per MAC (or parameter) saved, each block's removal tried. ``target: sparsity`` drops that
    share of the blocks; ``macs``/``params`` drop until the target is met."""
    candidates = residual_blocks(model, example)
    if not candidates:
        raise UnsupportedModelError(
            "prune: method 'blocks' found no residual block (a block whose output adds its input back, "
            "or a transformer/decoder layer of a layout pare knows)"
        )
    measure = (
        (lambda m: count_flops(m, example[:1]) // 2 / before["macs"])
        if config.target == "macs"
        else (lambda m: count_params(m)["params"] / before["params"])
    )
    if config.criterion == "cosine":
        influence = block_influence(model, candidates, calibration_batches(ctx, config))
        scores = [{"block": n, "influence": influence[n]} for n in candidates]
        order = sorted(scores, key=lambda s: s["influence"])
    else:
        base_score, base_size = ctx.score(model), measure(model)
        scores = []
        for name in candidates:
            trial = drop(copy.deepcopy(model), [name])
            saved = base_size - measure(trial)
            scores.append({"block": name, "score_drop": base_score - ctx.score(trial), "saved": saved})
        order = sorted(scores, key=lambda s: (max(s["score_drop"], 0) + 1e-6) / max(s["saved"], 1e-9))
    if config.target == "sparsity":
        dropped = [s["block"] for s in order[: round(fraction * len(candidates))]]
        drop(model, dropped)
        return dropped, scores
    dropped = []
    for s in order:
        if measure(model) <= 1 - fraction + 1e-9:
            break
        drop(model, [s["block"]])
        dropped.append(s["block"])
    return dropped, scores


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> None:
    """Removing channels shifts the sums every later layer sees; the BatchNorm running
    statistics learned before no longer match. Re-estimate them (a plain average over a few
    training batches, no gradient step)."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x, _ in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def _mask_step(model, config, ctx, fraction, selected, info) -> dict[str, torch.Tensor]:
    if config.one_shot:
        return _one_shot(model, config, ctx, fraction, selected, info)
    grads = (
        criteria.gradients(model, list(selected.values()), _score_batches(ctx, config), ctx.split.kind)
        if config.criterion in criteria.NEEDS_GRADIENTS
        else None
    )
    scores = {n: criteria.weight_scores(m, config.criterion, grads) for n, m in selected.items()}
    # weights already zero stay zero: give them the lowest score
    scores = {
        n: torch.where(selected[n].weight.detach() == 0, torch.full_like(s, -1.0), s)
        for n, s in scores.items()
    }
    if config.method == "n_m":
        masks = n_m_masks(scores, config.n, config.m)
    else:
        masks = threshold_masks(scores, fraction, config.scope)
    with torch.no_grad():
        for n, mask in masks.items():
            selected[n].weight.mul_(mask)
    return masks


def _one_shot(model, config, ctx, fraction, selected, info) -> dict[str, torch.Tensor]:
    """Wanda or SparseGPT on the selected Linear layers (``oneshot``), from calibration windows
    of the training split; a token table tied to a layer keeps that layer dense (its rows are
    the embeddings too)."""
    others = {n: type(m).__name__ for n, m in selected.items() if not isinstance(m, nn.Linear)}
    if others:
        raise ConfigError(
            f"criterion: {config.criterion!r} prunes Linear layers from their inputs; these are not: "
            f"{others}; exclude them or use criterion: l1"
        )
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    tied = [n for n, m in selected.items() if id(m.weight) in tables]
    layers = {n: m for n, m in selected.items() if n not in tied}
    if config.method == "n_m":
        odd = {n: m.in_features for n, m in layers.items() if m.in_features % config.m}
        if odd:
            raise ConfigError(
                f"m: {config.m} does not divide the inputs of {odd}; exclude those layers or choose m dividing them"
            )
    n_m = (config.n, config.m) if config.method == "n_m" else None
    batches = calibration_batches(ctx, config)
    info["calibration_tokens"] = sum(b.numel() for b in batches) if batches[0].dim() == 2 else None
    if tied:
        info["kept_dense"] = {n: "tied to the token table" for n in tied}
    info["reconstruction_error"] = oneshot.prune_layers(
        model, layers, batches, config.criterion, fraction, n_m, config.damp
    )
    return {n: (m.weight.detach() != 0).float() for n, m in layers.items()}


def _structured_step(model, config, ctx, fraction, originals, selected, example, before) -> Counter:
    groups, skipped = _safe_groups(model, selected, example)
    scores = _group_scores(model, config, ctx, groups)  # once per step: trials below share them
    if config.target == "sparsity":
        _remove_channels(model, config, fraction, originals, groups, scores)
        return skipped
    # a MACs or parameter target: find the channel fraction that reaches it (bisection on copies)
    goal = 1 - fraction
    measure = (
        (lambda m: count_flops(m, example[:1]) // 2 / before["macs"])
        if config.target == "macs"
        else (lambda m: count_params(m)["params"] / before["params"])
    )
    lo, hi = 0.0, 0.99
    tried = {}
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        _remove_channels(trial, config, mid, dict(originals), groups, scores)
        tried[mid] = measure(trial)
        lo, hi = (mid, hi) if tried[mid] > goal else (lo, mid)
    # rounding channel counts makes the measure a step function: take the closest step
    best = min(tried, key=lambda f: abs(tried[f] - goal))
    _remove_channels(model, config, best, originals, groups, scores)
    return skipped


def unsafe_channels(model: nn.Module, config: PruneConfig, split) -> Counter:
    """What structured pruning would leave alone in ``model`` and why (``pare validate`` prints
    it before any training): channels per reason; an untraceable model raises, naming the line."""
    example = get_task(split.kind).inputs(split.train.X[:2])
    selected = select_layers(
        model, include=config.layers, exclude=config.exclude, types=SUPPORTED, key="layers"
    )
    return _safe_groups(model, set(selected), example)[1]


def _safe_groups(model, selected, example):
    """Channel groups that may be removed, and how many channels were left alone and why."""
    _, graph = trace(model, example)
    groups = channel_groups(graph)
    candidates = [g for g in groups if g.unsafe is None and set(g.layer) <= selected]
    failed = verify(model, candidates, example[:2])
    for g in groups:
        g.unsafe = g.unsafe or failed.get(g.layer)
    skipped = Counter(g.unsafe for g in groups if g.unsafe)
    return [g for g in candidates if g.unsafe is None], skipped


def _remove_channels(model, config, fraction, originals, safe, scores) -> None:
    """Remove the lowest-scoring channel groups so each layer keeps ``1 - fraction`` of its
    original channels (scope layer), or the whole model does (scope global)."""
    by_layer: dict[tuple, list] = defaultdict(list)
    for g in safe:
        by_layer[g.layer].append(g)
    for layer, gs in by_layer.items():
        originals.setdefault(layer, len(gs))
    key = _group_key
    remove = []
    if config.scope == "layer":
        for layer, gs in by_layer.items():
            target_left = max(1, round(originals[layer] * (1 - fraction)))
            if config.round_to > 1:  # odd widths defeat blocked CPU kernels: round up to a multiple
                target_left = min(len(gs), -(-target_left // config.round_to) * config.round_to)
            ranked = sorted(gs, key=lambda g: scores[key(g)])
            remove += ranked[: max(0, len(gs) - target_left)]
    else:  # global: scores normalised by their layer's mean, so layers of different scale compare
        norm = {}
        for gs in by_layer.values():
            mean = sum(scores[key(g)] for g in gs) / len(gs) or 1.0
            norm.update({key(g): scores[key(g)] / mean for g in gs})
        total = sum(originals[layer] for layer in by_layer)
        budget = round(total * fraction) - (total - len(safe))
        left = {layer: len(gs) for layer, gs in by_layer.items()}
        for g in sorted(safe, key=lambda g: norm[key(g)]):
            if budget <= 0:
                break
            if left[g.layer] > 1:
                remove.append(g)
                left[g.layer] -= 1
                budget -= 1
    if remove:
        shrink(model, remove)


def _group_key(g) -> tuple:
    return tuple(sorted(g.producers))


def _group_scores(model, config, ctx, groups) -> dict[tuple, float]:
    # sorted: the random criterion draws per module in this order, which must not follow hashing
    producers = sorted({name for g in groups for name, _ in g.producers})
    modules = {name: model.get_submodule(name) for name in producers}
    per_module: dict[str, torch.Tensor] = {}
    if config.criterion in criteria.CHANNEL_CRITERIA:
        grads = (
            criteria.gradients(model, list(modules.values()), _score_batches(ctx, config), ctx.split.kind)
            if config.criterion in criteria.NEEDS_GRADIENTS
            else None
        )
        per_module = {n: criteria.channel_scores(m, config.criterion, grads) for n, m in modules.items()}
    elif config.criterion == "entropy":
        per_module = _entropies(model, modules, _score_batches(ctx, config))
    out = {}
    for g in groups:
        if config.criterion == "bn_scale":
            gammas = [
                model.get_submodule(n).weight[k].abs().item()
                for n, k in g.followers
                if isinstance(model.get_submodule(n), nn.BatchNorm1d | nn.BatchNorm2d)
            ]
            if not gammas:  # no BatchNorm behind this channel: fall back to its weights
                gammas = [
                    criteria.channel_scores(model.get_submodule(n), "l1")[k].item() for n, k in g.producers
                ]
            out[_group_key(g)] = float(sum(gammas))
        else:
            out[_group_key(g)] = float(sum(per_module[n][k] for n, k in g.producers))
    return out


@torch.no_grad()
def _entropies(model, modules, score_batches) -> dict[str, torch.Tensor]:
    outputs = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda mod, inp, out, n=n: outputs[n].append(out.detach()))
        for n, m in modules.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for x, _ in score_batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: criteria.activation_entropy(torch.cat(v)) for n, v in outputs.items()}


def _layer_table(model, selected, masks) -> list[dict]:
    rows = []
    for name in selected:
        try:
            m = model.get_submodule(name)
        except AttributeError:  # inside a dropped block
            continue
        w = m.weight.detach()
        rows.append(
            {
                "layer": name,
                "type": type(m).__name__,
                "shape": "x".join(map(str, w.shape)),
                "params": w.numel(),
                "zero": float((w == 0).float().mean()),
            }
        )
    return rows


def export(
    model: nn.Module, config: PruneConfig, info: dict, stage_dir: Path, example: torch.Tensor
) -> dict | None:
    """Unstructured and N:M stages ship as bitmask + values; the others as their smaller dense weights."""
    if config.method in ("structured", "blocks"):
        return None
    path = stage_dir / "model.sparse.safetensors"
    save_sparse(model, path)
    return {"artifact": path, "runtime": "torch"}


def restore(model: nn.Module, config: PruneConfig, info: dict) -> nn.Module:
    if config.method == "blocks":
        model = drop(model, info["dropped_blocks"])
    elif config.reshapes:
        model = reshape(model, info["shapes"])
    sync_configs(model)
    return model


register(
    "prune",
    PruneConfig,
    export=export,
    restore=restore,
    search={
        "method": ["structured", "unstructured"],
        "amount": (0.2, 0.8),
        "finetune_epochs": [0, 3],
        "order": 10,
    },
)(prune)
