"""Search spaces, sampled through an Optuna trial.

A technique's space is its registered ``search`` hint, or else read from its config's typed
fields: ``Literal`` and ``bool`` fields become choices, numbers with both bounds a range, whole
numbers with only a lower bound a range up to four times the default. So a technique registered
later is searched without a line changed here. Architecture spaces are per zoo model.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pare.registry import Technique

# zoo model -> argument -> choices (list) or an integer range (tuple)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {"width": [16, 32, 64, 128, 256], "depth": (1, 4)},
    "cnn": {"width": [8, 16, 32, 64], "depth": (1, 3), "kernel_size": [3, 5]},
    "resnet": {"width": [8, 16, 32], "depth": (1, 3), "stages": (2, 3)},
    "transformer": {"dim": [32, 64, 128], "depth": (1, 4), "heads": [2, 4, 8]},
    "gpt": {"dim": [32, 64, 128], "depth": (1, 4), "heads": [2, 4, 8]},
}
DEFAULT_ORDER = 50  # where a technique without a hint goes in a pipeline (0 first, 90 quantize)


def derived_space(config_cls: type) -> dict[str, Any]:
    """A space from a config dataclass's fields (choices and bounded numbers only)."""
    hints = typing.get_type_hints(config_cls)
    space: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is not Literal and len(args) == 1 and typing.get_origin(args[0]) is Literal:
            tp = args[0]  # Optional[Literal[...]]
        bounds = f.metadata.get("bounds", {})
        low = bounds.get("ge", bounds.get("gt"))
        high = bounds.get("le", bounds.get("lt"))
        if typing.get_origin(tp) is Literal:
            space[f.name] = list(typing.get_args(tp))
        elif tp is bool:
            space[f.name] = [True, False]
        elif tp is float and low is not None and high is not None:
            space[f.name] = (float(low), float(high))
        elif tp is int and low is not None:
            default = f.default if isinstance(f.default, int) else low
            space[f.name] = (int(low), int(high if high is not None else max(low + 1, 4 * default)))
    return space


def technique_space(technique: Technique) -> dict[str, Any] | None:
    """The space ``pare auto`` samples for a technique; None when it opted out."""
    if technique.search is False:
        return None
    if technique.search:
        return {k: v for k, v in technique.search.items() if k != "order"}
    return derived_space(technique.config_cls)


def technique_order(technique: Technique) -> int:
    return (technique.search or {}).get("order", DEFAULT_ORDER)


def sample(trial, prefix: str, space: dict[str, Any]) -> dict:
    """Values for ``space`` from ``trial``; dotted keys become nested mappings (student.shrink)."""
    out: dict = {}
    for key, choices in space.items():
        name = f"{prefix}.{key}"
        if isinstance(choices, list):
            value = trial.suggest_categorical(name, choices)
        elif all(isinstance(c, int) for c in choices):
            value = trial.suggest_int(name, *choices)
        else:
            value = trial.suggest_float(name, *choices)
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
