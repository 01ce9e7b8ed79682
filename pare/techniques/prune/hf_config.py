"""A pruned Hugging Face model's config made to describe what is left, so that it saves and
reloads as a smaller Hugging Face folder (and its KV cache and ONNX graph are sized right).

transformers builds a decoder from one config: a layer count, one FFN width and one head count
for every layer. After blocks are dropped the kept layers are renumbered (each attention indexes
the KV cache by ``layer_idx``) and per-layer lists such as Qwen2's ``layer_types`` keep the kept
layers' entries; after heads or neurons go, the widths are read back from the layers. Widths that
differ from layer to layer cannot be written into such a config, and are refused by name.
"""

from __future__ import annotations

import sys

import torch.nn as nn

from pare.errors import ConfigError


def hf_models(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face models inside ``model`` (a causal LM's inner model shares its
    config object)."""
    if "transformers" not in sys.modules:  # no Hugging Face model can have been built
        return []
    from transformers import PreTrainedModel

    found, configs = [], set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and id(m.config) not in configs:
            found.append(m)
            configs.add(id(m.config))
    return found


def _stack(hf: nn.Module) -> nn.ModuleList | None:
    """The decoder's list of layers: the ModuleList whose items hold an attention."""
    for m in hf.modules():
        if (
            isinstance(m, nn.ModuleList)
            and len(m)
            and all(hasattr(x, "self_attn") or hasattr(x, "attn") for x in m)
        ):
            return m
    return None


def _attention(layer: nn.Module) -> nn.Module:
    return layer.self_attn if hasattr(layer, "self_attn") else layer.attn


def _one(values: set, what: str, key: str):
    if len(values) > 1:
        raise ConfigError(
            f"scope: the pruned layers keep different {what} ({sorted(values)}), which a Hugging Face "
            f"config ({key}) cannot describe; use scope: layer (the same share in every layer)"
        )
    return next(iter(values))


def sync_configs(model: nn.Module) -> dict:
    """Write the layer count, FFN width and head counts of every Hugging Face model inside
    ``model`` into its config; returns what changed, ``{key: [before, after]}``."""
    changed: dict = {}
    for hf in hf_models(model):
        config, stack = hf.config, _stack(hf)
        if stack is None:
            continue

        def put(key: str, value, config=config) -> None:
            before = getattr(config, key, None)
            if before != value:
                setattr(config, key, value)
                changed[key] = [before, value]

        old = [_attention(layer).layer_idx for layer in stack]
        if isinstance(getattr(config, "layer_types", None), list):
            put("layer_types", [config.layer_types[i] for i in old])
        put("num_hidden_layers", len(stack))
        for i, layer in enumerate(stack):  # the KV cache is indexed by these
            for m in layer.modules():
                if getattr(m, "layer_idx", None) is not None:
                    m.layer_idx = i
        if all(
            hasattr(layer, "self_attn") and hasattr(layer.mlp, "down_proj") for layer in stack
        ):  # Llama family
            put(
                "intermediate_size",
                _one({x.mlp.down_proj.in_features for x in stack}, "FFN widths", "intermediate_size"),
            )
            head = _one({x.self_attn.head_dim for x in stack}, "head sizes", "head_dim")
            queries = _one(
                {x.self_attn.q_proj.out_features // head for x in stack}, "head counts", "num_attention_heads"
            )
            kv = _one(
                {x.self_attn.k_proj.out_features // head for x in stack},
                "key/value head counts",
                "num_key_value_heads",
            )
            if "num_attention_heads" in changed or queries != config.num_attention_heads:
                put("head_dim", head)  # no longer hidden_size / heads: stated
            put("num_attention_heads", queries)
            put("num_key_value_heads", kv)
        elif all(hasattr(layer, "attn") and hasattr(layer.mlp, "c_fc") for layer in stack):  # GPT-2
            width = _one({x.mlp.c_fc.out_features for x in stack}, "FFN widths", "n_inner")
            if width != (config.n_inner or 4 * config.n_embd):
                put("n_inner", width)
    return changed
