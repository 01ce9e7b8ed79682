"""Options of the ``lowrank`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pare.config import Config, param


@dataclass(frozen=True)
class LowRankConfig(Config):
    """Factorize Linear layers by SVD and convolutions by Tucker-2 or spatial SVD."""

    conv: Literal["tucker2", "spatial", "none"] = "tucker2"  # 1x1 convolutions always use SVD
    rank_by: Literal["energy", "ratio", "rank", "sensitivity"] = "energy"
    energy: float = param(0.9, gt=0, le=1)  # energy: share of the squared singular values kept
    ratio: float = param(0.5, gt=0, lt=1)  # ratio: each layer keeps at most this share of its parameters
    rank: int | None = param(None, ge=1)  # rank: the same rank for every layer
    max_drop: float = param(
        1.0, ge=0
    )  # sensitivity: validation points (perplexity: percent) one layer may cost
    layers: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    # factorizing at 90 % energy costs accuracy that a short fine-tune wins back: on by default
    finetune_epochs: int = param(2, ge=0)
    finetune_lr: float | None = param(None, gt=0)
    # validation points (perplexity: percent) the stage may lose, fine-tuned, before pare warns
    warn_drop: float = param(1.0, ge=0)
    merge: bool = False  # multiply the factors back into single layers at the end (same function, no saving)

    def check(self) -> list[str]:
        if self.rank_by == "rank" and self.rank is None:
            return ["rank: rank_by 'rank' needs rank: <a whole number>"]
        if self.rank is not None and self.rank_by != "rank":
            return [f"rank: only used with rank_by: rank (got rank_by {self.rank_by!r})"]
        return []
