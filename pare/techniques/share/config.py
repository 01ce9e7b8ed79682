"""Options of the ``share`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pare.config import Config, param


@dataclass(frozen=True)
class ShareConfig(Config):
    """Let many weights share few values: k-means clusters per layer, or the hashing trick."""

    method: Literal["kmeans", "hash"] = "kmeans"
    clusters: int = param(16, ge=2, le=256)  # kmeans: shared values per layer (zeros kept apart)
    compression: float = param(8.0, gt=1)  # hash: virtual weights per stored value
    keep_zeros: bool = True  # kmeans: weights already pruned to zero stay zero (their own code)
    layers: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    finetune_epochs: int = param(0, ge=0)  # trains the shared values, not single weights
    finetune_lr: float | None = param(None, gt=0)
    entropy_coding: bool = True  # the artifact file compressed losslessly (xz)
