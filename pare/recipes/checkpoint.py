"""A finished stage of a pretrained causal LM as a folder the serving stack loads: the stage
rebuilt from its run folder, its quantized Linear layers written with their own codes and
scales, everything else as it is. ``compressed-tensors``: a Hugging Face folder transformers
loads (in the format vLLM serves; not tried with vLLM here), ``pare.export.hf_checkpoint``.
``gptq``: the same folder in the GPTQ layout (qweight/qzeros/scales/g_idx),
``pare.export.gptq_checkpoint``.
``onnx``: model.onnx with a KV cache and MatMulNBits layers for ONNX Runtime,
``pare.export.onnx_lm``."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from pare.errors import UnsupportedModelError
from pare.export.hf_checkpoint import write_checkpoint
from pare.export.onnx_lm import write_onnx_folder
from pare.generate import causal_backbone
from pare.models.hf import load_tokenizer, source
from pare.recipes.pipeline import stage_model
from pare.techniques.quantize.apply import quant_layers
from pare.techniques.quantize.layers import merge_all


def stage_checkpoint(
    stage_folder: Path, out: Path, fmt: str = "compressed-tensors", accuracy_level: int = 0
) -> tuple[str, int]:
    """Write the stage in ``stage_folder`` into the new folder ``out`` in format ``fmt``
    (``compressed-tensors``, ``gptq`` or ``onnx``): (stage name, bytes)."""
    model, recipe, name = stage_model(stage_folder)
    if causal_backbone(model) is None:
        raise UnsupportedModelError(
            f"{stage_folder}: stage {name!r} is not a pretrained causal LM (model.hf or model.gguf); only "
            f"those are written as checkpoints"
        )
    tokenizer = load_tokenizer(*source(recipe.model))
    return name, lm_checkpoint(model, tokenizer, out, fmt, accuracy_level, f"stage {name!r}")


def lm_checkpoint(
    model: nn.Module,
    tokenizer,
    out: Path,
    fmt: str = "compressed-tensors",
    accuracy_level: int = 0,
    label="model",
) -> int:
    """``model`` (pare's ``CausalLM``, quantized or not; changed in place: its layers are merged
    back to plain ones) written into the new folder ``out``; returns its bytes."""
    lm = causal_backbone(model)
    layers = quant_layers(lm)
    for layer_name, layer in layers.items():
        if not isinstance(layer.base, nn.Linear):
            raise UnsupportedModelError(f"{layer_name}: only Linear layers have a weight-only layout")
        if layer.dynamic_bits or layer.qat:
            # the format's weight-only schemes would drop the int8 inputs the stage was measured with
            raise UnsupportedModelError(
                f"{label}, layer {layer_name}: its inputs are quantized too; write a weight_only stage"
            )
    quantized = {f"{n}.weight": (layer.quantized, layer.spec) for n, layer in layers.items()}
    # names relative to the transformers model, and plain Linear layers holding pare's dequantized
    # weights for whatever the format keeps in float
    if fmt == "onnx":
        return write_onnx_folder(merge_all(lm), quantized, out, tokenizer, accuracy_level)
    return write_checkpoint(merge_all(lm), quantized, out, tokenizer, fmt)
