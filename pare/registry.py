"""Techniques register here once, by name; recipes name techniques, never import paths.

A technique is a config dataclass plus ``apply(model, config, ctx) -> (model, info)``. It may
also give ``restore(model, config, info) -> model``: the stage's module structure rebuilt from
its ``info`` (for example a pruned shape), so that ``--resume`` can load the saved weights; and
``export(model, config, info, stage_dir, example) -> {"artifact": path, "runtime": name}``: the
file the stage ships, measured instead of plain safetensors weights (see docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn


@dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type
    apply: Callable[[nn.Module, Any, Any], tuple[nn.Module, dict]]
    restore: Callable[[nn.Module, Any, dict], nn.Module] | None = None
    export: Callable[..., dict] | None = None
    description: str = ""
    search: dict | bool | None = None  # auto-compression: the space to sample (see pare.search.space)


_REGISTRY: dict[str, Technique] = {}
_RAN: set[str] = set()  # techniques whose functions were called in this process (provenance)


def register(name: str, config_cls: type, *, restore=None, export=None, description: str = "", search=None):
    """Decorator for a technique's ``apply`` function. ``search`` narrows what ``pare auto``
    samples (``{"key": [choices] or (low, high), "order": n}``); ``False`` leaves the technique
    out; by default the space is read from the config's typed fields."""

    def decorate(apply):
        doc = description or (apply.__doc__ or "").strip()
        run, back, out = (_noting(name, f) for f in (apply, restore, export))
        _REGISTRY[name] = Technique(name, config_cls, run, back, out, doc, search)
        return apply

    return decorate


def _noting(name: str, fn):
    """``fn``, recording that technique ``name`` ran: a result depends on the code of the
    techniques that ran, not on every one the registry imported (``pare.provenance``)."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        _RAN.add(name)
        return fn(*args, **kwargs)

    return run


def ran() -> set[str]:
    """The techniques called through the registry in this process so far."""
    return set(_RAN)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def techniques() -> dict[str, Technique]:
    """Every registered technique (importing ``pare`` registers the built-in ones)."""
    return dict(_REGISTRY)


def technique_for(config: Any) -> Technique:
    for t in techniques().values():
        if isinstance(config, t.config_cls):
            return t
    raise TypeError(f"no technique takes a config of type {type(config).__name__}")
