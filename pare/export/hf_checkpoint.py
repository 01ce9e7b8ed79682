"""Causal LMs as Hugging Face folders: weight-only quantized Linear layers in the
compressed-tensors ``pack-quantized`` format (what llm-compressor writes and vLLM serves), the
rest as float safetensors.

Per quantized Linear ``L``: ``L.weight_packed`` (int32; codes offset to unsigned by 2^(bits-1),
packed densely, lowest bits first, 32 codes in ``bits`` words per row), ``L.weight_scale``
(out, groups), ``L.weight_shape``, and for asymmetric codes ``L.weight_zero_point`` (packed the
same way along the output dimension); config.json carries ``quantization_config`` with one group
of targets per distinct scheme, so mixed precision stays exact. The codes and scales are pare's
own, written as they are: the weights transformers decodes equal pare's dequantized ones.
transformers (with the compressed-tensors package) loads symmetric folders as they are and
asymmetric ones with ``CompressedTensorsConfig(dequantize=True)``: its compressed layout has no
place for packed zero points yet (vllm-project/llm-compressor#1618). The GPTQ layout
(``pare.export.gptq_checkpoint``) is the other format written here, through the same folder
writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors.torch import save_file

from pare.errors import ConfigError, UnsupportedModelError
from pare.export.gptq_checkpoint import gptq_config, gptq_problem, gptq_tensors
from pare.formats.packed import pack_int32_rows
from pare.formats.schemes import QuantizedWeight, WeightSpec
from pare.io import atomic_write_json

FORMAT = "pack-quantized"
# transformers stores these Linear layers transposed (Conv1D); the format has no layout for them
CONV1D_MODELS = {"gpt2", "openai-gpt"}


def checkpoint_problem(model, quantized: dict[str, tuple[QuantizedWeight, WeightSpec]]) -> str | None:
    """Why these weights cannot be written in either layout (None: they can)."""
    for name, (q, spec) in quantized.items():
        if spec.scheme != "affine" or spec.granularity == "per_tensor":
            return f"{name}: scheme {spec.scheme!r} {spec.granularity} is not a per-channel or per-group integer grid"
        if "input_scale" in q.params:
            return (
                f"{name}: AWQ's per-input scales are not folded into the preceding norm, and the format "
                f"has no place for them"
            )
    return None


def _weight_tensors(q: QuantizedWeight, spec: WeightSpec, shape, dtype) -> dict[str, torch.Tensor]:
    out_features, in_features = shape
    offset = 2 ** (spec.bits - 1)
    # symmetric codes are signed (q); asymmetric ones are unsigned codes with an unsigned zero
    # point, i.e. q - offset and zero - offset in the format's signed terms: the same weight
    shift = offset if spec.symmetric else 0
    codes = q.codes.reshape(out_features, in_features).to(torch.int64) + shift
    tensors = {
        "weight_packed": pack_int32_rows(codes, spec.bits),
        "weight_scale": q.params["scale"].reshape(out_features, -1).to(dtype).contiguous(),
        "weight_shape": torch.tensor([out_features, in_features], dtype=torch.int64),
    }
    if not spec.symmetric:
        zero = q.params["zero_point"].reshape(out_features, -1).to(torch.int64)
        tensors["weight_zero_point"] = pack_int32_rows(zero.T.contiguous(), spec.bits).T.contiguous()
    return tensors


def _weights_args(spec: WeightSpec) -> dict:
    grouped = spec.granularity == "per_group"
    return {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "strategy": "group" if grouped else "channel",
        "group_size": spec.group_size if grouped else None,
        "dynamic": False,
        "actorder": None,  # pare's act-order keeps every column in its original group
        "observer": "minmax",
        "observer_kwargs": {},
        "block_structure": None,
    }


def quantization_config(model: nn.Module, quantized: dict[str, tuple[QuantizedWeight, WeightSpec]]) -> dict:
    groups: dict[tuple, list[str]] = {}
    specs = {}
    for name, (_, spec) in quantized.items():
        key = (spec.bits, spec.symmetric, spec.granularity, spec.group_size)
        groups.setdefault(key, []).append(name.removesuffix(".weight"))
        specs[key] = spec
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    targeted = {n for names in groups.values() for n in names}
    return {
        "quant_method": "compressed-tensors",
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {
                "targets": sorted(names),
                "weights": _weights_args(specs[key]),
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
            for i, (key, names) in enumerate(sorted(groups.items()))
        },
        "ignore": sorted(linear - targeted),
        "kv_cache_scheme": None,
        "sparsity_config": {},
    }


def _tensors_and_config(model: nn.Module, quantized: dict[str, tuple[QuantizedWeight, WeightSpec]], layout):
    """model.safetensors' tensors and config.json's content: quantized weights as the layout's
    tensors, everything else as it is; a tied output layer stored once unless it is quantized."""
    config = model.config.to_dict()
    state = model.state_dict()
    dtype = next(iter(state.values())).dtype
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings()) + ".weight"
    if getattr(model.config, "tie_word_embeddings", False):
        if head in quantized:
            config["tie_word_embeddings"] = False  # the output layer's codes, the table's floats
        else:
            state.pop(head, None)  # one tensor: stored once, under the input table's name
    tensors = {}
    for name, value in state.items():
        if name in quantized:
            q, spec = quantized[name]
            prefix = name.removesuffix("weight")
            for key, t in layout.tensors(q, spec, value.shape, dtype).items():
                tensors[prefix + key] = t
        else:
            tensors[name] = value.detach().contiguous()
    if quantized:
        config["quantization_config"] = layout.config(model, quantized)
    else:
        config.pop("quantization_config", None)  # a GGUF file's: its weights are float now
    return tensors, config


class Layout(NamedTuple):
    problem: Callable  # (model, quantized) -> why it cannot be written, or None
    tensors: Callable  # (codes, spec, weight shape, dtype) -> the layer's tensors, by suffix
    config: Callable  # (model, quantized) -> config.json's quantization_config


LAYOUTS = {
    "compressed-tensors": Layout(lambda model, quantized: None, _weight_tensors, quantization_config),
    "gptq": Layout(gptq_problem, gptq_tensors, gptq_config),
}


def write_checkpoint(
    model: nn.Module,
    quantized: dict[str, tuple[QuantizedWeight, WeightSpec]],
    folder: Path,
    tokenizer=None,
    fmt: str = "compressed-tensors",
) -> int:
    """``model`` (a transformers causal LM, its Linear weights pare's dequantized ones) as the new
    Hugging Face folder ``folder``: config.json, model.safetensors, generation_config.json and the
    tokenizer; the parameters ``quantized`` names (-> codes and spec) in layout ``fmt``
    (``compressed-tensors`` pack-quantized or ``gptq``), plain float safetensors when it names
    none. Written into a temporary sibling and renamed, so ``folder`` is either complete or
    absent. Returns the folder's bytes."""
    layout = LAYOUTS[fmt]
    problem = None
    if model.config.model_type in CONV1D_MODELS:
        problem = f"{model.config.model_type}'s Conv1D layers have no {fmt} layout"
    elif quantized:
        problem = checkpoint_problem(model, quantized) or layout.problem(model, quantized)
    if problem:
        raise UnsupportedModelError(f"cannot write a {fmt} checkpoint: {problem}")
    tensors, config = _tensors_and_config(model, quantized, layout)
    with new_folder(folder) as tmp:
        # not save_pretrained: transformers refuses to save a model it read from a GGUF file
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_model_files(model, tmp, tokenizer, config)
    return folder_bytes(folder)


@contextlib.contextmanager
def new_folder(folder: Path):
    """A temporary sibling of ``folder`` to write into, renamed to ``folder`` when the block ends
    without error, so that ``folder`` is either complete or absent; an existing one is refused."""
    if folder.exists():
        raise ConfigError(f"{folder}: already exists; name a new folder (nothing is overwritten)")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_files(model: nn.Module, folder: Path, tokenizer=None, config: dict | None = None) -> None:
    """config.json, generation_config.json and the tokenizer's files: what a loader reads beside
    the weights."""
    config = dict(config or model.config.to_dict())
    # a GGUF file's config names no architecture: without one a loader cannot tell a causal LM
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    atomic_write_json(folder / "config.json", config)  # (its encoder of dtypes)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        atomic_write_json(folder / "generation_config.json", json.loads(generation.to_json_string()))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
