"""Quantization: ``quantize`` in recipes. See config.py for the options."""

from pare.techniques.quantize.apply import quantize
from pare.techniques.quantize.config import MixedPrecisionConfig, QuantizeConfig

__all__ = ["quantize", "QuantizeConfig", "MixedPrecisionConfig"]
