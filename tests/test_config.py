from dataclasses import dataclass, field
from typing import Literal

import pytest

from pare.config import from_dict, param, to_dict
from pare.errors import ConfigError


@dataclass
class Inner:
    size: int = param(3, ge=1)


@dataclass
class Outer:
    mode: Literal["fast", "slow"] = "fast"
    rate: float = param(0.1, gt=0, le=1)
    names: list[str] = field(default_factory=list)
    shape: tuple[int, int] | None = None
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_defaults_and_round_trip():
    cfg = from_dict(Outer, {"mode": "slow", "shape": [2, 3], "inner": {"size": 5}})
    assert cfg == Outer(mode="slow", shape=(2, 3), inner=Inner(5))
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_every_problem_reported_at_once_with_did_you_mean():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"mdoe": "fast", "rate": 5, "inner": {"size": 0}, "flag": "yes", "names": "a"})
    problems = e.value.problems
    assert len(problems) == 5
    text = str(e.value)
    assert "mdoe: unknown key (did you mean 'mode'?)" in text
    assert "rate: 5.0 must be <= 1" in text
    assert "inner.size: 0 must be >= 1" in text
    assert "flag: expected true or false, got 'yes'" in text
    assert "names: expected a list, got 'a'" in text


def test_literal_choice_error_lists_options():
    with pytest.raises(
        ConfigError, match=r"mode: 'fsat' is not one of 'fast', 'slow' \(did you mean 'fast'\?\)"
    ):
        from_dict(Outer, {"mode": "fsat"})


def test_numbers_typed_strictly_but_yaml_exponents_accepted():
    assert from_dict(Outer, {"rate": "1e-3"}).rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="inner.size: expected a whole number, got 2.5"):
        from_dict(Outer, {"inner": {"size": 2.5}})
    with pytest.raises(ConfigError, match="shape: expected 2 values"):
        from_dict(Outer, {"shape": [1, 2, 3]})
