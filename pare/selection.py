"""Which layers a technique touches: one helper for every technique.

Patterns are exact module names (``blocks.0.conv1``), globs (``blocks.*.conv?``) or regular
expressions prefixed with ``re:`` (``re:blocks\\.[01]\\..*``). Types are module classes or
their names (``"Linear"``). Nothing matching is an error that lists the layers that exist.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

import torch.nn as nn

from pare.config import did_you_mean
from pare.errors import ConfigError


def matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


PATTERN_KEYS = ("layers", "exclude", "trainable", "overrides")  # config keys that hold layer patterns


def pattern_problems(config) -> list[str]:
    """``re:`` patterns of a technique config that do not compile, checked before any model is
    built (``pare validate``); dict keys count too (``overrides``)."""
    problems = []
    for key in PATTERN_KEYS:
        value = getattr(config, key, None)
        for pattern in list(value or ()):
            if isinstance(pattern, str) and pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    problems.append(
                        f"{key}: {pattern!r} is not a valid regular expression ({e}); "
                        f"escape special characters, e.g. re:blocks\\.0\\..*"
                    )
    return problems


def _type_ok(module: nn.Module, types: Iterable) -> bool:
    return any(isinstance(module, t) if isinstance(t, type) else type(module).__name__ == t for t in types)


def select_layers(
    model: nn.Module,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    types: Iterable[type | str] = (nn.Linear, nn.Conv2d),
    key: str = "layers",
) -> dict[str, nn.Module]:
    """Modules of ``types`` whose names match ``include`` (all when None) and no ``exclude``.

    ``key`` names the recipe key in error messages. Raises ``ConfigError`` when an include
    pattern matches nothing, or when nothing at all is selected.
    """
    types = tuple(types)
    candidates = {n: m for n, m in model.named_modules() if n and _type_ok(m, types)}
    include = list(include) if include is not None else None
    exclude = list(exclude)
    problems = []
    for pattern in [*(include or []), *exclude]:
        if not any(matches(n, pattern) for n in candidates):
            problems.append(
                f"{key}: {pattern!r} matches no layer of type {'/'.join(_type_name(t) for t in types)}"
                f"{did_you_mean(pattern, candidates)}; layers: {listing(candidates)}"
            )
    if problems:
        raise ConfigError(problems)
    selected = {
        n: m
        for n, m in candidates.items()
        if (include is None or any(matches(n, p) for p in include))
        and not any(matches(n, p) for p in exclude)
    }
    if not selected:
        raise ConfigError(
            f"{key}: no layer selected (include={include}, exclude={exclude}); layers: {listing(candidates)}"
        )
    return selected


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule called ``name`` was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def layer_options(name: str, defaults: Mapping, overrides: Mapping[str, Mapping] | None) -> dict:
    """``defaults`` updated by every override whose pattern matches ``name``, in order given."""
    out = dict(defaults)
    for pattern, values in (overrides or {}).items():
        if matches(name, pattern):
            out.update(values)
    return out


def _type_name(t) -> str:
    return t.__name__ if isinstance(t, type) else str(t)


def listing(names: Mapping | Iterable[str], limit: int = 20) -> str:
    names = list(names)
    if not names:
        return "none"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
