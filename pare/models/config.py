"""The model section of a recipe: a zoo model, a user factory or a Hugging Face folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pare.config import param


@dataclass
class ModelConfig:
    name: str | None = None  # a zoo model ...
    factory: str | None = None  # ... or "package.module:function" returning an nn.Module ...
    hf: str | None = None  # ... or a local Hugging Face model directory (or a package carrying one)
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    max_params: int | None = param(None, ge=1)  # refuse larger models (default: 1e9, or what RAM can train)

    def check(self) -> list[str]:
        given = [k for k in ("name", "factory", "hf") if getattr(self, k) is not None]
        if len(given) != 1:
            return [
                f"model: give exactly one of name (a zoo model), factory ('package.module:function') or hf "
                f"(a Hugging Face model directory); got {', '.join(given) or 'none'}"
            ]
        return []
