"""pare's packed weight format: quantized codes bit-packed at their real width.

One safetensors file. Each quantized weight ``<name>`` is stored as ``<name>.codes`` (uint8,
``bits`` bits per code, little-endian) plus its parameters (``<name>.scale``, ``.zero_point``,
``.codebook``, ...); everything else is stored as is. The header metadata records, per layer,
the scheme, bit width, shape and code offset, so ``load_packed`` can rebuild the dequantized
weights into a model of the same architecture. With entropy coding the whole file is
xz-compressed (lossless; pays off when few codes dominate, e.g. the zero code of a pruned
layer). Hashed layers (the hashing trick) store only their shared values and a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pare.export.weights import load_tensors, save_tensors
from pare.formats.codebook import expand, hash_tying
from pare.formats.schemes import QuantizedWeight, WeightSpec

DEFAULT_SPEC = WeightSpec()  # the header records only the fields that differ from it


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers < 2^bits, packed ``bits`` each into bytes."""
    values = np.asarray(values, dtype=np.uint32).ravel()
    if bits == 8:
        return values.astype(np.uint8)
    planes = ((values[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little")


def pack_int32_rows(unsigned: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, n) codes in [0, 2^bits) -> (rows, ceil(n * bits / 32)) int32, each row padded to a
    multiple of 32 codes: the dense little-endian bit stream of ``pack_bits`` in 32-bit words
    (for 2, 4 and 8 bits, word j of a row holds its codes j*k .. j*k+k-1, the first lowest)."""
    rows, n = unsigned.shape
    values = np.zeros((rows, -(-n // 32) * 32), dtype=np.uint32)
    values[:, :n] = np.asarray(unsigned)
    # whole rows of 32 codes are whole words, so one stream over all rows splits at row ends
    words = pack_bits(values, bits).view("<i4").reshape(rows, -1)
    return torch.from_numpy(words[:, : -(-n * bits // 32)].copy())


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[:count].astype(np.int64)
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return planes.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))


def dequantize(codes: torch.Tensor, params: dict[str, torch.Tensor], spec: WeightSpec, shape) -> torch.Tensor:
    """Codes and parameters back to float weights: the inverse of each scheme in quantizers.py."""
    s = spec.scheme
    if s == "affine":
        scale, zero = params["scale"], params["zero_point"]
        rows = scale.numel()
        c = codes.reshape(rows, -1).float()
        w = ((c - zero[:, None]) * scale[:, None]).reshape(shape)
        if "input_scale" in params:  # AWQ: the stored codes are of weight x input_scale
            w = (w.reshape(shape[0], -1) / params["input_scale"][None, :]).reshape(shape)
        return w
    if s == "pow2":
        c = codes.reshape(shape[0], -1).float()
        e = c.abs() - 1 + params["e_min"][:, None]
        return torch.where(c == 0, torch.zeros_like(c), torch.sign(c) * 2**e).reshape(shape)
    if s == "codebook":
        return params["codebook"][codes.long()].reshape(shape)
    if s == "fixed_point":
        return (codes.float() * 2.0 ** -params["frac_bits"].float()).reshape(shape)
    if s == "binary":
        c = codes.reshape(shape[0], -1).float()
        return ((c * 2 - 1) * params["scale"][:, None]).reshape(shape)
    if s == "ternary":
        return (codes.reshape(shape[0], -1).float() * params["scale"][:, None]).reshape(shape)
    raise ValueError(f"unknown scheme {s!r}")


def save_packed(
    model: nn.Module,
    quantized: dict[str, tuple[QuantizedWeight, WeightSpec]],
    path: Path,
    entropy_coding: bool = False,
) -> int:
    """``quantized``: parameter name of each quantized weight -> (its QuantizedWeight, spec)."""
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for name, value in model.state_dict().items():
        if name not in quantized:
            tensors[name] = value.detach().contiguous()
            continue
        qw, spec = quantized[name]
        if spec.scheme == "hashed":
            tensors[f"{name}.values"] = qw.params["values"].float().contiguous()
            layers[name] = {"scheme": "hashed", "shape": list(value.shape), "seed": int(qw.params["seed"])}
            continue
        if qw.codes is None:  # fp16 / bf16: the low-precision tensor is the payload
            tensors[name] = qw.params["weight"].contiguous()
            layers[name] = {"scheme": spec.scheme, "bits": 16, "shape": list(value.shape)}
            continue
        offset = int(qw.codes.min())
        stored = (qw.codes.to(torch.int64) - offset).numpy()
        width = max(1, int(stored.max()).bit_length())
        tensors[f"{name}.codes"] = torch.from_numpy(pack_bits(stored, width))
        for key, p in qw.params.items():
            tensors[f"{name}.{key}"] = (
                p.detach().float().reshape(-1).contiguous() if p.dim() else p.float().reshape(1)
            )
        layers[name] = {
            "scheme": spec.scheme,
            "bits": width,
            "offset": offset,
            "shape": list(value.shape),
            "count": int(qw.codes.numel()),
            "spec": {k: v for k, v in spec.__dict__.items() if v != getattr(DEFAULT_SPEC, k)},
        }
    return save_tensors(tensors, path, "pare_packed", layers, compress=entropy_coding)


def load_packed(model: nn.Module, path: Path) -> nn.Module:
    """Load a packed file into ``model`` (same architecture, plain layers) as float weights."""
    tensors, layers = load_tensors(path, "pare_packed")
    state = {}
    for name, value in model.state_dict().items():
        info = layers.get(name)
        if info is None:
            state[name] = tensors[name]
        elif info["scheme"] == "hashed":
            values = tensors[f"{name}.values"]
            state[name] = expand(values, hash_tying(info["shape"], len(values), info["seed"])).to(value.dtype)
        elif info["bits"] == 16:
            state[name] = tensors[name].to(value.dtype)
        else:
            spec = WeightSpec(**info["spec"])
            codes = (
                unpack_bits(tensors[f"{name}.codes"].numpy(), info["bits"], info["count"]) + info["offset"]
            )
            params = {
                k.split(".")[-1]: v
                for k, v in tensors.items()
                if k.startswith(f"{name}.") and not k.endswith(".codes")
            }
            if "frac_bits" in params:
                params["frac_bits"] = params["frac_bits"].reshape(())
            state[name] = dequantize(torch.from_numpy(codes), params, spec, info["shape"]).to(value.dtype)
    model.load_state_dict(state)
    return model
