"""The ``lora`` technique: wrap, freeze, train adapters, report their share and bytes, merge."""

from __future__ import annotations

import torch.nn as nn

from pare.errors import ConfigError
from pare.export.peft_adapter import write_peft_adapter
from pare.generate import causal_backbone
from pare.registry import register
from pare.selection import matches, replace_module, select_layers
from pare.techniques.lora.config import LoRAConfig
from pare.techniques.lora.layers import LoRALinear, QuantBase, adapter_state, merge_adapters


def _linear(module: nn.Module) -> nn.Linear:
    """The float Linear of a selected layer: itself, or the one a quantize stage wrapped."""
    return module.base if _quantized(module) else module


def _quantized(module: nn.Module) -> bool:
    # a quantize stage's QuantLayer, by its name: techniques do not import each other
    return type(module).__name__ == "QuantLayer"


def tied_to_tables(model: nn.Module, names) -> list[str]:
    """Layers whose weight is a token table too (a tied LM head): an update merged into them
    would be lost on reload, where the head is tied to the table again; they stay frozen."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [n for n in names if id(_linear(model.get_submodule(n)).weight) in tables]


def wrap(model: nn.Module, config: LoRAConfig) -> dict[str, nn.Module]:
    """Adapters on the selected Linear layers. A layer a quantize stage left quantized keeps
    the codes it chose as the frozen base (QLoRA over GPTQ, AWQ or RTN); a float one is
    quantized here when ``base_bits`` asks for it."""
    layers = select_layers(
        model, include=config.layers, exclude=config.exclude, types=(nn.Linear, "QuantLayer"), key="layers"
    )
    quantized = {n for n, m in model.named_modules() if _quantized(m)}
    for name in [n for n in layers if n.rpartition(".")[0] in quantized]:  # a QuantLayer's own float Linear
        del layers[name]
    for name in tied_to_tables(model, layers):
        del layers[name]
    problems = []
    for n, m in layers.items():
        linear = _linear(m)
        if not isinstance(linear, nn.Linear):
            problems.append(f"layers: {n!r} is a quantized {type(linear).__name__}; LoRA takes Linear layers")
        elif config.rank > min(linear.in_features, linear.out_features):
            problems.append(
                f"rank: {config.rank} is larger than layer {n!r} allows "
                f"({min(linear.in_features, linear.out_features)}, the smaller of its {linear.in_features} "
                f"inputs and {linear.out_features} outputs)"
            )
        elif _quantized(m) and getattr(m, "dynamic_bits", None):
            problems.append(
                f"layers: {n!r} quantizes its inputs at run time (dynamic mode); LoRA trains over "
                "weight-only quantized layers: quantize with mode: weight_only, or after the lora stage"
            )
        elif _quantized(m) and config.base_bits not in (None, m.spec.bits):
            problems.append(
                f"base_bits: {config.base_bits} differs from the {m.spec.bits} bits layer {n!r} was "
                "quantized to by an earlier stage, whose codes are the base; leave base_bits out"
            )
    if problems:
        raise ConfigError(problems)
    for name, layer in layers.items():
        if _quantized(layer):
            base = QuantBase.of(layer)
        elif config.base_bits:
            base = QuantBase.rtn(layer, config.base_bits, config.group_size)
        else:
            base = layer
        replace_module(model, name, LoRALinear(base, config.rank, config.alpha, config.dropout))
    return layers


def trainable_parameters(model: nn.Module, config: LoRAConfig) -> list:
    """Adapters and the ``trainable`` modules; everything else is frozen."""
    names = {n for n, _ in model.named_modules()}
    missing = [p for p in config.trainable if not any(matches(n, p) for n in names)]
    if missing:
        raise ConfigError([f"trainable: {p!r} matches no module" for p in missing])
    params = []
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        keep = ".lora_" in name or any(matches(owner, pat) or matches(name, pat) for pat in config.trainable)
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    return params


def lora(model: nn.Module, config: LoRAConfig, ctx):
    """Low-rank adapters (LoRA) on chosen Linear layers over a frozen, optionally quantized base (QLoRA)."""
    total = sum(p.numel() for p in model.parameters())
    layers = wrap(model, config)
    params = trainable_parameters(model, config)
    trained = sum(p.numel() for p in params)
    history = (
        ctx.fit(model, params=params, epochs=config.finetune_epochs, lr=config.finetune_lr)
        if config.finetune_epochs
        else None
    )
    state = adapter_state(model)
    info = {
        "layers": list(layers),
        "rank": config.rank,
        "trainable_params": trained,
        "trainable_share": trained / total,
        "adapter_params": sum(v.numel() for v in state.values()),
        "adapter_bytes": _save_adapter(model, config, ctx.out_dir / "adapter"),
        "base_bits": config.base_bits,
        "history": history,
    }
    tied = tied_to_tables(model, [n for n, m in model.named_modules() if type(m) is nn.Linear])
    if tied:
        info["frozen_tied"] = tied  # no adapter: see tied_to_tables
    quantized = [
        m.base for m in model.modules() if isinstance(m, LoRALinear) and isinstance(m.base, QuantBase)
    ]
    if quantized:
        info["base_bits"] = max(q.spec.bits for q in quantized)
        info["base_bytes_quantized"] = sum(q.storage_bytes() for q in quantized)
    for p in model.parameters():
        p.requires_grad_(True)
    if config.merge:
        model = merge_adapters(model)
    return model, info


def _save_adapter(model: nn.Module, config: LoRAConfig, folder) -> int:
    """The adapters alone in PEFT's layout, named as in the model PEFT would load them onto: a
    causal LM's transformers model (inside pare's wrapper), or the model itself."""
    lm = causal_backbone(model)
    root, prefix = (lm, "model.") if lm is not None else (model, "")
    adapters = {
        n.removeprefix(prefix): (m.lora_A, m.lora_B)
        for n, m in model.named_modules()
        if isinstance(m, LoRALinear)
    }
    trained = {
        n.removeprefix(prefix): p
        for n, p in model.named_parameters()
        if p.requires_grad and ".lora_" not in n and n.startswith(prefix)
    }
    base = getattr(getattr(root, "config", None), "_name_or_path", None) or None
    return write_peft_adapter(
        folder,
        adapters,
        config.rank,
        config.alpha,
        config.dropout,
        trained,
        "CAUSAL_LM" if lm is not None else None,
        base,
    )


def restore(model: nn.Module, config: LoRAConfig, info: dict) -> nn.Module:
    """Merged stages are plain models; unmerged ones get their adapters back for the weights."""
    if not config.merge:
        wrap(model, config)
    return model


# adapters fine-tune; merged, they leave the model as large as before: nothing for auto to search
register("lora", LoRAConfig, restore=restore, search=False)(lora)
