"""``LoRALinear``: y = base(x) + (alpha / r) * B(A(dropout(x))), A random, B zero, so training
starts from the base model exactly. ``merge`` folds the update into the weight; ``unmerge``
takes it out again. With QLoRA the base weight is held as integer codes plus per-group
scales (``QuantBase``), its own round-to-nearest codes or those a quantize stage chose (GPTQ,
AWQ), and dequantized on each forward: frozen and small in memory."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.formats.packed import dequantize
from pare.formats.schemes import WeightSpec, quantize_weight
from pare.graph.merge import merge_modules


class QuantBase(nn.Module):
    """A frozen Linear held as integer codes and their parameters (scales, zero points),
    decoded on each forward: round-to-nearest of a float layer (``rtn``), or the very codes a
    quantize stage chose (``of``: GPTQ, AWQ or RTN), so that QLoRA trains over the base that
    ships instead of re-quantizing it."""

    def __init__(self, codes: torch.Tensor, params: dict[str, torch.Tensor], spec: WeightSpec, bias):
        super().__init__()
        self.spec = spec
        self.out_features, self.in_features = codes.shape
        # 4-bit codes sit in int8 memory here; storage_bytes counts them packed
        self.register_buffer("codes", codes.to(torch.int8 if spec.symmetric else torch.uint8))
        self.param_keys = sorted(params)
        for k, v in params.items():
            self.register_buffer(k, v.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def rtn(cls, linear: nn.Linear, bits: int, group_size: int) -> QuantBase:
        """Symmetric ``bits``-bit codes, one fp16 scale per group of ``group_size`` inputs (the
        largest divisor of the inputs up to it where it does not divide them)."""
        size = (
            group_size if linear.in_features % group_size == 0 else math.gcd(linear.in_features, group_size)
        )
        spec = WeightSpec(bits=bits, symmetric=True, granularity="per_group", group_size=size)
        q = quantize_weight(linear.weight.detach(), spec)
        params = {"scale": q.params["scale"].half(), "zero_point": q.params["zero_point"].to(torch.int8)}
        return cls(q.codes, params, spec, linear.bias)

    @classmethod
    def of(cls, layer: nn.Module) -> QuantBase:
        """The codes of a weight-only quantized Linear (``pare.techniques.quantize.layers.QuantLayer``,
        read through its ``quantized`` property)."""
        q = layer.quantized
        return cls(q.codes.reshape(layer.base.weight.shape), q.params, layer.spec, layer.base.bias)

    @property
    def weight(self) -> torch.Tensor:
        params = {k: getattr(self, k).float() for k in self.param_keys}
        return dequantize(self.codes, params, self.spec, (self.out_features, self.in_features))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def storage_bytes(self) -> int:
        """Codes packed at ``bits`` each, scales and zero points as held (symmetric zero points,
        all 0, are not stored by the serving formats and not counted)."""
        kept = [k for k in self.param_keys if not (k == "zero_point" and self.spec.symmetric)]
        params = sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in kept)
        return self.codes.numel() * self.spec.bits // 8 + params


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
