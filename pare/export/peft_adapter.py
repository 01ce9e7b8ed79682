"""LoRA adapters in PEFT's layout, the one the serving stack loads (``peft.PeftModel.
from_pretrained(base, folder)``, vLLM's and TGI's LoRA adapters): a folder holding
``adapter_config.json`` and ``adapter_model.safetensors``. Tensors are named
``base_model.model.<module>.lora_A.weight`` (rank x inputs) and ``...lora_B.weight`` (outputs x
rank), modules relative to the base model; the update is ``lora_alpha / r * B @ A``, as pare's
``LoRALinear`` computes it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pare.io import atomic_write

PREFIX = "base_model.model."


def write_peft_adapter(
    folder: Path,
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    trained: dict[str, torch.Tensor] | None = None,
    task_type: str | None = None,
    base: str | None = None,
) -> int:
    """``adapters``: ``{module name: (A, B)}``; ``trained``: parameters of modules trained in full
    (PEFT's ``modules_to_save``), by parameter name. Returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in adapters.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.detach().contiguous().clone()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.detach().contiguous().clone()
    for name, p in (trained or {}).items():
        tensors[PREFIX + name] = p.detach().contiguous().clone()
    saved = sorted({n.rsplit(".", 1)[0] for n in trained or {}})
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(adapters),  # full names: PEFT matches a name or its dotted suffix
        "modules_to_save": saved or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    atomic_write(
        folder / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    atomic_write(
        folder / "adapter_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2))
    )
    return sum(f.stat().st_size for f in folder.iterdir())
