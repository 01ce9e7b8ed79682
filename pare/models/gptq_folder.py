"""Reading a GPTQ-layout checkpoint folder (``checkpoint_format: gptq``, written by AutoGPTQ,
GPTQModel or ``pare checkpoint --format gptq``) as a float model. transformers itself needs optimum
and a GPTQ kernel package for one; decoding the int32 words is a few shifts and masks."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from pare.errors import UnsupportedModelError

BITS = (2, 4, 8)  # 3-bit GPTQ packs codes across word boundaries: a layout of its own, not read or written


def load_gptq(folder: Path, config) -> nn.Module:
    """A GPTQ-layout folder (``qweight``/``qzeros``/``scales``/``g_idx``, checkpoint_format
    ``gptq``; act-order's g_idx included) as a float model: its architecture built from
    ``config`` (its config.json, left as it is), each quantized layer's weight decoded (the
    layout: ``pare.export.gptq_checkpoint``)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    spec = config.quantization_config
    bits, fmt = spec.get("bits"), spec.get("checkpoint_format", spec.get("format", "gptq"))
    if bits not in BITS or fmt != "gptq":
        raise UnsupportedModelError(
            f"model: {str(folder)!r} is a GPTQ checkpoint with bits {bits!r} and checkpoint_format {fmt!r}; "
            f"pare reads checkpoint_format 'gptq' at {', '.join(map(str, BITS))} bits"
        )
    del config.quantization_config
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"model: {str(folder)!r} holds no .safetensors file; GPTQ weights are read from those"
        )
    state = {k: v for f in files for k, v in load_file(f).items()}
    for layer in sorted(k.removesuffix(".qweight") for k in list(state) if k.endswith(".qweight")):
        parts = {p: state.pop(f"{layer}.{p}") for p in ("qweight", "qzeros", "scales", "g_idx")}
        state[f"{layer}.weight"] = read_gptq_layer(parts, bits)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    missing = [k for k in missing if not _tied(model, k)]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"model: the GPTQ checkpoint {str(folder)!r} does not match its config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def _tied(model: nn.Module, name: str) -> bool:
    """``name`` is the output layer's weight, shared with the token table."""
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return tied and model.get_submodule(name.rpartition(".")[0]) is head


def read_gptq_layer(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """A layer's float weight (out, in) from its qweight, qzeros, scales and g_idx: shifts and
    masks on the int32 words, the v1 zero + 1, scales and zeros gathered per input column."""
    mask = 2**bits - 1
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    qweight, qzeros = tensors["qweight"], tensors["qzeros"]
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & mask  # (K/k, k, N)
    codes = codes.reshape(-1, qweight.shape[1])  # (K, N)
    zeros = ((qzeros[:, :, None] >> shifts[None, None, :]) & mask).reshape(qzeros.shape[0], -1) + 1
    g = tensors["g_idx"].long()
    scales = tensors["scales"].float()
    return ((codes - zeros[g]).float() * scales[g]).T.contiguous()
