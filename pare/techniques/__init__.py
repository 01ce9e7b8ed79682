"""Compression techniques, one package each (config / apply / layers). Importing this package
registers them. None ship yet: quantize, prune, distill, lowrank, share, lora and nas plug in here."""

from pare.techniques import (
    prune,  # noqa: E402,F401
    quantize,  # noqa: E402,F401
)
