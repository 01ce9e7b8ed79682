"""Structured pruning: remove coupled channels for real, so the model gets smaller and faster.

``channel_groups`` turns the traced dependency graph into groups of channels that must go
together; ``shrink`` rebuilds every affected layer with only the kept channels (Conv2d, Linear,
BatchNorm, LayerNorm, depthwise Conv2d), in place in the user's model object, whose own
forward keeps working because only its submodules change shape. ``shapes``/``reshape`` record
and rebuild the new shapes so a pruned model can be reloaded (``--resume``, ``load_pruned``).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from pare.graph.tracing import Graph
from pare.selection import replace_module


@dataclass
class ChannelGroup:
    ids: list[int]
    producers: list[tuple[str, int]]
    consumers: list[tuple[str, list[int]]]
    followers: list[tuple[str, int]]
    unsafe: str | None

    @property
    def layer(self) -> tuple[str, ...]:
        """The producing layers: channels of one layer (or of layers a residual ties) form one pool."""
        return tuple(sorted({name for name, _ in self.producers}))


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    out = []
    for ids in graph.groups().values():
        producers = [graph.producers[i] for i in ids if i in graph.producers]
        if not producers:
            continue
        out.append(
            ChannelGroup(
                ids=ids,
                producers=producers,
                consumers=[c for i in ids for c in graph.consumers.get(i, [])],
                followers=[f for i in ids for f in graph.followers.get(i, [])],
                unsafe=next((graph.unsafe[i] for i in ids if i in graph.unsafe), None),
            )
        )
    return out


@torch.no_grad()
def shrink(model: nn.Module, remove: list[ChannelGroup]) -> dict[str, dict]:
    """Remove the channels of ``remove`` from every layer they touch; returns the kept indices
    per layer ({"out": [...], "in": [...]}) for the record."""
    drop_out: dict[str, set[int]] = defaultdict(set)
    drop_in: dict[str, set[int]] = defaultdict(set)
    for g in remove:
        for name, k in g.producers + g.followers:
            drop_out[name].add(k)
        for name, positions in g.consumers:
            drop_in[name].update(positions)
    kept = {}
    for name in sorted(set(drop_out) | set(drop_in)):
        m = model.get_submodule(name)
        out_keep = _keep(_out_size(m), drop_out.get(name, set()))
        in_keep = _keep(_in_size(m), drop_in.get(name, set())) if _in_size(m) is not None else None
        replace_module(model, name, sliced(m, out_keep, in_keep))
        kept[name] = {"out": out_keep, "in": in_keep}
    return kept


@torch.no_grad()
def verify(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor) -> dict[tuple, str]:
    """Check the tracer's reading of the graph where it matters: for each pool of channels (the
    layers a group comes from) remove one group from a copy, and compare with the model run with
    that group's channels zeroed. Removal must compute exactly that; a pool where it does not (an
    op whose channel semantics the tracer misread) is returned with why, and left alone."""
    was_training = model.training
    model.eval()
    failed = {}
    try:
        for g in {g.layer: g for g in reversed(groups)}.values():  # the first group of each pool
            shrunk = copy.deepcopy(model)
            try:
                shrink(shrunk, [g])
                got = shrunk(example)
            except Exception as e:  # a shape the tracer did not foresee: the pool is not safe
                failed[g.layer] = f"{', '.join(g.layer)}: removing a channel breaks the forward pass ({e})"[
                    :300
                ]
                continue
            with _zeroed(model, g):
                want = model(example)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                failed[g.layer] = (
                    f"{', '.join(g.layer)}: removing a channel is not the same as zeroing it (an op "
                    f"mixes channels: e.g. a LayerNorm over them)"
                )
    finally:
        model.train(was_training)
    return failed


@contextmanager
def _zeroed(model: nn.Module, g: ChannelGroup):
    """``g``'s channels zeroed at their producers and norms for the duration, then restored."""
    saved = []
    for name, k in g.producers + g.followers:
        m = model.get_submodule(name)
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                saved.append((p, k, p[k].clone()))
                p[k] = 0
    try:
        yield
    finally:
        for p, k, value in saved:
            p[k] = value


def _keep(size: int, drop: set[int]) -> list[int]:
    return [i for i in range(size) if i not in drop]


def _out_size(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return m.num_features
    if isinstance(m, nn.LayerNorm):
        return m.normalized_shape[0]
    raise TypeError(type(m).__name__)


def _in_size(m: nn.Module) -> int | None:
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return m.in_channels
    if isinstance(m, nn.Linear):
        return m.in_features
    return None


def sliced(m: nn.Module, out_keep: list[int], in_keep: list[int] | None) -> nn.Module:
    o = torch.tensor(out_keep, dtype=torch.long)
    i = torch.tensor(in_keep, dtype=torch.long) if in_keep is not None else None
    if isinstance(m, nn.Conv2d):
        depthwise = m.groups > 1
        new = nn.Conv2d(
            len(out_keep) if depthwise else len(in_keep),
            len(out_keep),
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            groups=len(out_keep) if depthwise else 1,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
        w = m.weight[o] if depthwise else m.weight[o][:, i]
    elif isinstance(m, nn.Linear):
        new = nn.Linear(len(in_keep), len(out_keep), bias=m.bias is not None)
        w = m.weight[o][:, i]
    elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        new = type(m)(
            len(out_keep),
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[o])
            new.running_var.copy_(m.running_var[o])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
        w = m.weight[o] if m.affine else None
    elif isinstance(m, nn.LayerNorm):
        new = nn.LayerNorm(len(out_keep), eps=m.eps, elementwise_affine=m.elementwise_affine)
        w = m.weight[o] if m.elementwise_affine else None
    else:
        raise TypeError(f"cannot slice {type(m).__name__}")
    if w is not None:
        new.weight.copy_(w)
    if getattr(m, "bias", None) is not None and new.bias is not None:
        new.bias.copy_(m.bias[o])
    return new.train(m.training)


def shapes(model: nn.Module) -> dict[str, dict]:
    """The size of every prunable layer, enough to rebuild a pruned model's structure."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm):
            out[name] = {"out": _out_size(m)}
    return out


@torch.no_grad()
def reshape(model: nn.Module, target: dict[str, dict]) -> nn.Module:
    """Give ``model``'s layers the sizes in ``target`` (weights are loaded afterwards)."""
    for name, size in target.items():
        m = model.get_submodule(name)
        current = shapes(nn.Sequential(m)).get("0")
        if current == size:
            continue
        out_keep = list(range(size["out"]))
        in_keep = list(range(size["in"])) if "in" in size and size.get("groups", 1) == 1 else None
        replace_module(model, name, sliced(m, out_keep, in_keep))
    return model
