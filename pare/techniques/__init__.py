"""Compression techniques, one package each (config / apply / layers). Importing this package
registers them: prune, quantize, distill, lowrank and share; lora and nas plug in the same way."""

from pare.techniques import (  # noqa: F401  (importing registers)
    distill,
    lowrank,
    prune,
    quantize,
    share,
)
