"""LoRA: low-rank adapters trained over a frozen (optionally quantized: QLoRA) base."""

from pare.techniques.lora import apply  # noqa: F401  (registers the technique)
from pare.techniques.lora.layers import LoRALinear, merge_adapters

__all__ = ["LoRALinear", "merge_adapters"]
