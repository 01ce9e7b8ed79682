"""Compression techniques, one package each (config / apply / layers). Importing this package
registers them: prune, quantize, distill, lowrank, share and lora."""

from pare.techniques import (  # noqa: F401  (importing registers)
    distill,
    lora,
    lowrank,
    prune,
    quantize,
    share,
)
