"""Modules of a quantized model: weight-quantized Conv2d/Linear and activation fake-quant.

``QuantLayer`` keeps the float layer as ``base`` and computes with its quantized weight; under
quantization-aware training it re-quantizes ``base.weight`` on every forward with a
straight-through gradient. ``merged()`` gives back a plain layer holding the dequantized weight.
``ActQuant`` first observes activations (calibration), then fake-quantizes them to uint8 with
the frozen range, through ``torch.fake_quantize_per_tensor_affine`` so that ONNX export writes
QuantizeLinear/DequantizeLinear with exactly these scales.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.formats.schemes import QuantizedWeight, WeightSpec, affine_params, quantize_weight
from pare.graph.merge import merge_modules
from pare.techniques.quantize.observers import Observer
from pare.training.hooks import Hook

ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations: what ONNX Runtime's x86 int8 kernels take


def act_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """Unsigned asymmetric scale and zero point for an activation range, as Python numbers
    (what the fake-quant op and the exported QuantizeLinear take)."""
    scale, zero = affine_params(torch.tensor([lo]), torch.tensor([hi]), bits, symmetric=False)
    return float(scale[0]), int(zero[0])


class QuantLayer(nn.Module):
    def __init__(self, base: nn.Module, spec: WeightSpec, *, dynamic_bits: int | None = None):
        super().__init__()
        self.base = base
        self.spec = spec
        self.dynamic_bits = dynamic_bits  # dynamic mode: inputs quantized per batch at run time
        self.qat = False
        self.refresh()
        # weight_q is derived, not saved: recompute it whenever base weights are loaded
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh())

    def refresh(self) -> None:
        """Re-quantize from ``base.weight`` (after calibration or training changed it); pinned
        codes (GPTQ, AWQ) are kept and only decoded again. The layer's tensors are its
        parameters and buffers alone (no cached copies beside them), so that moving them to disk
        and back (``pare.training.offload``) moves all of the layer."""
        if hasattr(self, "pinned_codes"):
            from pare.formats.packed import dequantize

            w = dequantize(self.pinned_codes, self._pinned_params(), self.spec, self.base.weight.shape)
            scale = None  # pinned codes are computed with as they are (weight_q)
        else:
            q = quantize_weight(self.base.weight, self.spec)
            w, scale = q.dequantized, q.params.get("scale")
        self.register_buffer("weight_q", w.detach(), persistent=False)
        # the int8 graphs read the scale on every forward (current_weight)
        int8 = self.int8_affine and scale is not None
        self.register_buffer("int8_scale", scale.detach() if int8 else None, persistent=False)

    def _pinned_params(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"pinned_{k}") for k in self.pinned_keys}

    @property
    def quantized(self) -> QuantizedWeight:
        """Codes, parameters and dequantized weight: the pinned ones, or RTN of ``base.weight``."""
        if hasattr(self, "pinned_codes"):
            codes = self.pinned_codes.to(torch.int32)
            return QuantizedWeight(self.weight_q, codes, self._pinned_params(), self.spec.bits)
        return quantize_weight(self.base.weight, self.spec)

    def pin(self, quantized: QuantizedWeight) -> None:
        """Keep these codes (chosen with calibration data) instead of re-quantizing ``base.weight``;
        they are saved with the model, so a resumed run loads them back."""
        # signed codes (symmetric) fit int8, unsigned ones (asymmetric, 0..255 at 8 bits) uint8
        codes = quantized.codes.to(torch.int8 if self.spec.symmetric else torch.uint8)
        self.register_buffer("pinned_codes", codes)
        self.pinned_keys = sorted(quantized.params)
        for k, v in quantized.params.items():
            self.register_buffer(f"pinned_{k}", v.detach().float().clone())
        self.refresh()

    @property
    def int8_affine(self) -> bool:
        s = self.spec
        return (
            s.scheme == "affine"
            and s.bits == 8
            and s.symmetric
            and s.granularity in ("per_channel", "per_tensor")
        )

    def current_weight(self) -> torch.Tensor:
        if self.qat:  # weights change every step: quantize them afresh
            w = self.base.weight
            q = quantize_weight(w, self.spec).dequantized
            return w + (q - w).detach() if self.training else q  # straight-through gradient
        if self.int8_scale is not None:
            # Same numbers as weight_q, written as a fake-quant op so that ONNX export emits
            # QuantizeLinear/DequantizeLinear with these scales (then stored as int8).
            scale = self.int8_scale
            if self.spec.granularity == "per_tensor":
                return torch.fake_quantize_per_tensor_affine(self.base.weight, float(scale[0]), 0, -128, 127)
            zero = torch.zeros(len(scale), dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(self.base.weight, scale.float(), zero, 0, -128, 127)
        return self.weight_q

    def forward(self, x):
        if self.dynamic_bits:
            lo, hi = x.detach().min().item(), x.detach().max().item()
            scale, zero = act_qparams(lo, hi, self.dynamic_bits)
            x = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 2**self.dynamic_bits - 1)
        w = self.current_weight()
        b = self.base
        if isinstance(b, nn.Conv2d):
            return F.conv2d(x, w, b.bias, b.stride, b.padding, b.dilation, b.groups)
        return F.linear(x, w, b.bias)

    def merged(self) -> nn.Module:
        """The plain layer holding the dequantized weight (see ``pare.graph.merge``)."""
        plain = copy.deepcopy(self.base)
        plain.weight = nn.Parameter(self.current_weight().detach().clone())
        return plain


class ActQuant(nn.Module):
    def __init__(self, observer: Observer, bits: int = 8):
        super().__init__()
        self.observer = observer
        self.bits = bits
        self.scale: float | None = None
        self.zero_point: int | None = None

    @property
    def calibrating(self) -> bool:
        return self.scale is None

    def freeze(self) -> None:
        self.scale, self.zero_point = act_qparams(*self.observer.range(self.bits), self.bits)

    def forward(self, x):
        if self.calibrating:
            self.observer.update(x)
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 2**self.bits - 1)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}"


def merge_all(model: nn.Module) -> nn.Module:
    """Replace every QuantLayer by its merged plain layer (activation quantizers stay)."""
    return merge_modules(model, QuantLayer)


class QATHook(Hook):
    """Quantization-aware training through the training loop's hooks: while training, every
    QuantLayer re-quantizes its float weights on each forward with a straight-through gradient
    (activation quantizers keep their post-training ranges); at the end the trained weights are
    quantized once more and frozen."""

    def on_train_start(self, state) -> None:
        for m in state.model.modules():
            if isinstance(m, QuantLayer):
                m.qat = True

    def on_train_end(self, state) -> None:
        for m in state.model.modules():
            if isinstance(m, QuantLayer):
                m.qat = False
                m.refresh()
