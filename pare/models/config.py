"""The model section of a recipe: a zoo model, a user factory, a Hugging Face folder or a GGUF file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pare.config import param


@dataclass
class ModelConfig:
    name: str | None = None  # a zoo model ...
    factory: str | None = None  # ... or "package.module:function" returning an nn.Module ...
    hf: str | None = None  # ... or a local Hugging Face model directory (or a package carrying one) ...
    gguf: str | None = None  # ... or a GGUF file (or a package shipping one), tokenizer included
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    max_params: int | None = param(None, ge=1)  # refuse larger models (default: 1e9, or what RAM can train)

    def check(self) -> list[str]:
        given = [k for k in ("name", "factory", "hf", "gguf") if getattr(self, k) is not None]
        if len(given) != 1:
            return [
                f"model: give exactly one of name (a zoo model), factory ('package.module:function'), hf "
                f"(a Hugging Face model directory) or gguf (a GGUF file); got {', '.join(given) or 'none'}"
            ]
        return []

    @property
    def pretrained(self) -> bool:
        """Loaded from a Hugging Face folder or a GGUF file (text in, with its own tokenizer)."""
        return self.hf is not None or self.gguf is not None
