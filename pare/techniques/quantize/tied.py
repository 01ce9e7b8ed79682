"""A token table tied to a quantized output layer reads that layer's codes too.

With tied embeddings (``tie_word_embeddings``: SmolLM2, Llama 3.2 1B, Qwen2 0.5B, GPT-2) the
token table and the output layer are one matrix. Quantizing the output layer alone leaves a
float copy of the whole matrix for the table (113 MB of SmolLM2's 538 MB in float32); making the
table follow the head puts one set of codes behind both, as llama.cpp stores a tied model, and
the ONNX export then gathers the table's rows from the head's MatMulNBits codes
(``pare.export.onnx_lm``), so the file holds the matrix once, in 4 or 8 bits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pare.techniques.quantize.layers import QuantLayer


@torch.no_grad()
def follow_quantized_heads(model: nn.Module) -> dict[str, str]:
    """Every ``nn.Embedding`` whose weight is the weight of a weight-only quantized layer is set
    to that layer's dequantized weight, in place; the layer's codes are pinned first (the float
    weight they were rounded from is overwritten). Returns {table name: layer name}."""
    tables = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    followed = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantLayer) or layer.dynamic_bits or layer.qat:
            continue
        table = tables.get(id(layer.base.weight))
        if table is None:
            continue
        if not hasattr(layer, "pinned_codes"):
            layer.pin(layer.quantized)
        layer.base.weight.copy_(layer.weight_q)
        followed[table] = name
    return followed
