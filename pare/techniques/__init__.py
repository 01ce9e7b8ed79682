"""Compression techniques, one package each (config / apply / layers). Importing this package
registers them: prune, quantize, distill, lowrank, share and lora. A technique never imports
another; one that builds on another (``distill`` shrinking its teacher by ``prune``) asks the
registry for it by name."""

from pare.techniques import distill, lora, lowrank, prune, quantize, share

BUILTIN = (prune, quantize, distill, lowrank, share, lora)
