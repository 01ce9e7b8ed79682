"""The GPTQ checkpoint layout (AutoGPTQ's, GPTQModel's ``checkpoint_format: gptq``: what
transformers with optimum, vLLM and TGI read), written from pare's codes and read back.

Per quantized Linear ``L`` (out N, in K, groups G): ``L.qweight`` int32 (K * bits / 32, N), the
unsigned codes packed along the input dimension, lowest bits first; ``L.qzeros`` int32
(G, N * bits / 32), packed along the output dimension, each stored as zero - 1 (the v1
convention loaders undo); ``L.scales`` float16 (G, N); ``L.g_idx`` int32 (K,), each input column's
group. pare's symmetric codes are signed: offset by 2^(bits-1), with that zero point they are the
same weights. config.json's ``quantization_config`` names one scheme for every quantized layer
(bits, group_size, sym, desc_act, lm_head), so the layout holds symmetric 2/4/8-bit grids of one
scheme over every Linear of the decoder blocks; the rest is refused by name, with the
compressed-tensors format as the fix. Scales round to float16 here, as in every GPTQ checkpoint.
The reader is ``pare.models.gptq_folder``: such a folder is also an input model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pare.formats.packed import pack_int32_rows
from pare.formats.schemes import QuantizedWeight, WeightSpec
from pare.models.gptq_folder import BITS


def gptq_problem(model: nn.Module, quantized: dict[str, tuple[QuantizedWeight, WeightSpec]]) -> str | None:
    """Why these weights (integer grids, per channel or group: checked for both layouts by
    ``hf_checkpoint.checkpoint_problem``) cannot be written in this one (None: they can)."""
    fix = "; write --format compressed-tensors instead"
    schemes = {
        (s.bits, s.granularity, s.group_size if s.granularity == "per_group" else -1)
        for _, s in quantized.values()
    }
    if len(schemes) > 1:
        return f"one scheme per checkpoint, these layers use {len(schemes)}: {sorted(schemes)}{fix}"
    head = model.get_output_embeddings()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m is not head and f"{name}.weight" not in quantized:
            return f"{name} is a float Linear layer; the layout quantizes every Linear of the decoder blocks{fix}"
    for name, (q, spec) in quantized.items():
        out_features, in_features = q.dequantized.shape
        per_word = 32 // spec.bits if spec.bits in BITS else 0
        if not spec.symmetric:
            return f"{name}: asymmetric codes (v1 stores zero - 1, which a zero of 0 cannot hold){fix}"
        if not per_word:
            return f"{name}: {spec.bits}-bit codes; the layout is written for {', '.join(map(str, BITS))} bits{fix}"
        if in_features % per_word or out_features % per_word:
            return (
                f"{name}: shape ({out_features}, {in_features}) does not pack {per_word} codes per int32{fix}"
            )
    return None


def gptq_tensors(q: QuantizedWeight, spec: WeightSpec, shape, dtype) -> dict[str, torch.Tensor]:
    out_features, in_features = shape
    offset = 2 ** (spec.bits - 1)
    codes = q.codes.reshape(out_features, in_features).to(torch.int64) + offset
    scale = q.params["scale"].reshape(out_features, -1)
    groups = scale.shape[1]
    group = in_features // groups
    zeros = torch.full((out_features, groups), offset - 1)  # v1: zero - 1
    return {
        # packed along the inputs: each output's codes as one row of words, transposed
        "qweight": pack_int32_rows(codes, spec.bits).T.contiguous(),
        "qzeros": pack_int32_rows(zeros.T, spec.bits),
        "scales": scale.T.to(torch.float16).contiguous(),
        "g_idx": torch.arange(in_features, dtype=torch.int32) // group,
    }


def gptq_config(model: nn.Module, quantized: dict[str, tuple[QuantizedWeight, WeightSpec]]) -> dict:
    spec = next(iter(quantized.values()))[1]
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": spec.bits,
        "group_size": spec.group_size if spec.granularity == "per_group" else -1,
        "sym": True,
        "desc_act": False,  # pare's act-order keeps every column in its original group
        "lm_head": f"{head}.weight" in quantized,
        "static_groups": False,
        "true_sequential": True,
    }
