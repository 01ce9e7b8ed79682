"""Options of the ``lora`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pare.config import Config, param


@dataclass(frozen=True)
class LoRAConfig(Config):
    """Train rank-``rank`` adapters on the chosen Linear layers; everything else stays frozen
    except the modules named in ``trainable`` (e.g. a new classification head)."""

    renamed = {"target": "layers", "epochs": "finetune_epochs", "lr": "finetune_lr"}

    layers: list[str] = field(default_factory=lambda: ["*"])  # Linear layers by name/glob/re:
    exclude: list[str] = field(default_factory=list)
    rank: int = param(8, ge=1)
    alpha: float = param(16.0, gt=0)  # the update is scaled by alpha / rank
    dropout: float = param(0.0, ge=0, lt=1)
    trainable: list[str] = field(default_factory=list)  # other modules trained in full
    base_bits: Literal[4, 8] | None = None  # QLoRA: the frozen base stored as int4/int8 groups
    group_size: int = param(64, ge=8)
    finetune_epochs: int = param(3, ge=0)
    finetune_lr: float = param(1e-3, gt=0)
    merge: bool = True  # fold adapters into the base after training (plain layers ship)
