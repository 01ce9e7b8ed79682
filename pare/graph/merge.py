"""One way to fold a technique's wrapper layers back into plain layers.

A wrapper (``QuantLayer``, ``LoRALinear``, a low-rank ``Factorized``) gives ``merged()``: the
plain layer it computes. ``merge_modules`` swaps each one for that layer and refuses a merged
layer whose parameters are not finite, naming it, so no technique ships NaN weights silently.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn

from pare.errors import PareError
from pare.selection import replace_module


class Mergeable(Protocol):
    def merged(self) -> nn.Module: ...


def merge_modules(model: nn.Module, kind: type) -> nn.Module:
    """Replace every submodule of type ``kind`` by its ``merged()`` plain layer, in place."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, kind):
            continue
        plain = module.merged().train(module.training)
        bad = [n for n, p in plain.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise PareError(
                f"layer {name!r}: merging its {type(module).__name__} gives a {bad[0]} that is not finite "
                f"(NaN or infinite); lower the learning rate or check the technique's options"
            )
        replace_module(model, name, plain)
    return model
