"""``LoRALinear``: y = base(x) + (alpha / r) * B(A(dropout(x))), A random, B zero, so training
starts from the base model exactly. ``merge`` folds the update into the weight; ``unmerge``
takes it out again. With QLoRA the base weight is held as integer codes plus per-group
scales (``QuantBase``) and dequantized on each forward: frozen and small in memory."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.graph.merge import merge_modules


class QuantBase(nn.Module):
    """A frozen Linear stored as symmetric ``bits``-bit codes with one scale per group of
    ``group_size`` inputs (round to nearest)."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int):
        super().__init__()
        w = linear.weight.detach()
        out_f, in_f = w.shape
        if in_f % group_size:
            group_size = math.gcd(in_f, group_size)
        qmax = 2 ** (bits - 1) - 1
        groups = w.reshape(out_f, in_f // group_size, group_size)
        scale = groups.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        self.register_buffer("codes", torch.round(groups / scale).clamp(-qmax, qmax).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.float16))
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )
        self.bits, self.in_features, self.out_features = bits, in_f, out_f

    @property
    def weight(self) -> torch.Tensor:
        return (self.codes.float() * self.scale.float()).reshape(self.out_features, self.in_features)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def storage_bytes(self) -> int:
        return self.codes.numel() * self.bits // 8 + self.scale.numel() * 2


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.folded = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A

    def forward(self, x):
        y = self.base(x)
        if self.folded:
            return y
        return y + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.folded:
            self._base_weight().add_(self.delta())
            self.folded = True

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear holding base + update (see ``pare.graph.merge``)."""
        bias = self.base.bias
        plain = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        plain.weight.copy_(self.base.weight.detach() + (0 if self.folded else self.delta().detach()))
        if bias is not None:
            plain.bias.copy_(bias.detach())
        return plain

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.folded:
            self._base_weight().sub_(self.delta())
            self.folded = False

    def _base_weight(self) -> torch.Tensor:
        if isinstance(self.base, QuantBase):
            raise ValueError("a quantized (QLoRA) base cannot take the update in place; use merge_adapters")
        return self.base.weight


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain Linear holding base + update (a QLoRA base is
    dequantized first): the shipped model has no adapter code in it."""
    return merge_modules(model, LoRALinear)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters (what a LoRA checkpoint ships), by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A" in n or ".lora_B" in n}
