"""A finished stage of a pretrained causal LM as a Hugging Face folder that transformers loads
(in the format vLLM serves; not tried with vLLM here): the stage rebuilt from its run folder,
its quantized Linear layers written with their own codes and scales
(``pare.export.hf_checkpoint``), everything else as it is."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from pare.errors import UnsupportedModelError
from pare.export.hf_checkpoint import write_checkpoint
from pare.generate import causal_backbone
from pare.models.hf import load_tokenizer, source
from pare.recipes.pipeline import stage_model
from pare.techniques.quantize.apply import quant_layers
from pare.techniques.quantize.layers import merge_all


def stage_checkpoint(stage_folder: Path, out: Path) -> tuple[str, int]:
    """Write the stage in ``stage_folder`` into the new folder ``out``: (stage name, bytes)."""
    model, recipe, name = stage_model(stage_folder)
    lm = causal_backbone(model)
    if lm is None:
        raise UnsupportedModelError(
            f"{stage_folder}: stage {name!r} is not a pretrained causal LM (model.hf or model.gguf); only "
            f"those are written as Hugging Face checkpoints"
        )
    layers = quant_layers(lm)
    for layer_name, layer in layers.items():
        if not isinstance(layer.base, nn.Linear):
            raise UnsupportedModelError(f"{layer_name}: only Linear layers have a pack-quantized layout")
        if layer.dynamic_bits or layer.qat:
            # the format's weight-only schemes would drop the int8 inputs the stage was measured with
            raise UnsupportedModelError(
                f"stage {name!r}, layer {layer_name}: its inputs are quantized too; write a weight_only stage"
            )
    quantized = {f"{n}.weight": (layer.quantized, layer.spec) for n, layer in layers.items()}
    # names relative to the transformers model, and plain Linear layers holding pare's dequantized
    # weights for whatever the format keeps in float; merged in place: the model was rebuilt for this
    size = write_checkpoint(merge_all(lm), quantized, out, load_tokenizer(*source(recipe.model)))
    return name, size
