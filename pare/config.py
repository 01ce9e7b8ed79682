"""Typed configs built from plain dicts (YAML), with every problem collected into one report.

Configs are dataclasses. ``from_dict`` checks unknown keys (with "did you mean"), types
(including ``Literal`` choices, optionals, lists and nested configs) and numeric ranges declared
with ``param(..., ge=0)``, then calls the config's own ``check()`` for cross-field rules.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union

from pare.errors import ConfigError

T = TypeVar("T")
_BUILDING = contextvars.ContextVar("building", default=False)  # from_dict checks once, itself


class Config:
    """Base of technique configs: declare them ``@dataclass(frozen=True)``. Constructing one in
    Python (``QuantizeConfig(mode="static", bits=4)``) runs the same checks as ``from_dict``
    and raises one ``ConfigError`` listing every problem. ``renamed`` maps keys that were
    renamed to their new names, so an old recipe is told what to write instead."""

    renamed: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        if not _BUILDING.get():  # built in Python: check it as if it came from a recipe
            from_dict(type(self), to_dict(self))


def param(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, factory=None):
    """A dataclass field with an optional numeric range, checked by ``from_dict``."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"bounds": bounds})
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def did_you_mean(value: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_dict(cls: type[T], data: Any, source: str | None = None) -> T:
    """Build ``cls`` from ``data`` or raise one ``ConfigError`` listing every problem."""
    problems: list[str] = []
    token = _BUILDING.set(True)
    try:
        obj = _build(cls, data, "", problems)
    finally:
        _BUILDING.reset(token)
    if problems:
        raise ConfigError(problems, source)
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config: what ``from_dict`` reads back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    where = path or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping of keys to values, got {data!r}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    renamed = getattr(cls, "renamed", {})
    for key in data:
        if key in renamed:
            problems.append(f"{_join(path, key)}: renamed to {renamed[key]!r}; write {renamed[key]}: instead")
        elif key not in fields:
            problems.append(
                f"{_join(path, key)}: unknown key{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}"
            )
    kwargs = {}
    before = len(problems)
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], _join(path, name), problems)
            value = kwargs[name]
            for op, bound in f.metadata.get("bounds", {}).items():
                if isinstance(value, int | float) and not _within(value, op, bound):
                    problems.append(f"{_join(path, name)}: {value!r} must be {_OPS[op]} {bound}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: required key is missing")
    if len(problems) > before:
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        problems.extend(f"{path + ': ' if path else ''}{p}" for p in check())
    return obj


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _within(value: float, op: str, bound: float) -> bool:
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, path, problems)
        for option in options:  # first type that accepts the value wins
            trial: list[str] = []
            out = _coerce(option, value, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: {value!r} is not {' or '.join(_name(o) for o in options)}")
        return None
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            problems.append(f"{path}: {value!r} is not one of {choices}{did_you_mean(value, args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {value!r}")
            return None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                problems.append(f"{path}: expected {len(args)} values, got {value!r}")
                return None
            return tuple(_coerce(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is float:
        # YAML reads "1e-3" (no dot) as a string; accept numeric strings for floats only.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
            return None
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = float("inf")
        if not math.isfinite(value):
            problems.append(f"{path}: expected a finite number, got {value!r}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected a whole number, got {value!r}")
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
            return None
        return value
    return value


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "a whole number", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def parse_size(text: str | int | None, key: str = "size") -> int | None:
    """``100KB``, ``1.5MB``, ``2GB``, ``2048`` -> bytes (KB = 1024 bytes); ``key`` names the option
    in the error."""
    if text is None or isinstance(text, int):
        return text
    units = {"GB": 2**30, "MB": 2**20, "KB": 2**10, "B": 1}
    t = str(text).strip().upper().replace("IB", "B")
    for unit, scale in units.items():
        if t.endswith(unit):
            try:
                return int(float(t[: -len(unit)]) * scale)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a size; write e.g. 100KB, 1.5MB, 2GB or 2048") from None
