"""Workloads for the memory estimator: a recipe's model, or a Hugging Face config, with batches
of the right shape (random values: memory depends on shapes, not on data)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from pare.config import did_you_mean
from pare.errors import UnsupportedModelError
from pare.estimate.training import Workload
from pare.models.hf import is_causal


def recipe_workload(recipe, seq_len: int | None = None) -> Workload:
    """The recipe's model (built untrained; a Hugging Face model from its config) on its task."""
    from pare.models import build_model
    from pare.recipes.pipeline import recipe_splits
    from pare.tasks import get_task

    split = recipe_splits(recipe)[0]
    task = get_task(split.kind)
    shape = tuple(split.input_shape)
    text = recipe.model.pretrained or split.kind == "language_model"
    if text and seq_len:
        shape = (*shape[:-1], seq_len)
    vocab = split.vocab or 30522

    if recipe.model.pretrained:
        from pare.models.hf import resolve_gguf

        spec = recipe.model.hf or str(resolve_gguf(recipe.model.gguf))

        def build():
            return hf_model(spec, split.kind, split.num_classes)

    else:

        def build():  # a zoo GPT's positions follow the input shape, so seq_len applies to it too
            return build_model(recipe.model, shape, split.num_classes, split.kind)

    def batch(n):
        x = torch.randint(1, vocab, (n, *shape)) if text else torch.randn(n, *shape)
        y = torch.randint(
            0, max(split.num_classes, 1), (n, shape[-1]) if split.kind == "language_model" else (n,)
        )
        return task.inputs(x), y

    return Workload(recipe.name, build, batch, task.loss)


def _config(spec: str):
    from transformers import AutoConfig

    from pare.models.hf import load_config, resolve_gguf, resolve_hf

    path = Path(spec)
    if path.suffix == ".gguf":
        gguf = resolve_gguf(spec)
        return load_config(gguf.parent, gguf.name)
    if path.is_file():  # a config.json alone
        data = json.loads(path.read_text())
        model_type = data.pop("model_type", None)
        from transformers import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise UnsupportedModelError(
                f"{spec}: model_type {model_type!r} is not an architecture transformers knows"
                f"{did_you_mean(str(model_type), CONFIG_MAPPING.keys())}; give the config.json of a supported "
                f"model (bert, gpt2, llama, ...)"
            )
        return AutoConfig.for_model(model_type, **data)
    folder = resolve_hf(spec)
    try:
        return AutoConfig.from_pretrained(str(folder))
    except (ValueError, OSError) as e:
        raise UnsupportedModelError(
            f"{spec}: not a Hugging Face config transformers can read ({e})"
        ) from None


def hf_model(spec: str, kind: str = "classification", num_classes: int = 2):
    """A Hugging Face model from its config alone (random weights: the estimate needs shapes)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from pare.models.hf import CausalLM, TextClassifier, TextEncoder

    config = _config(spec)
    if kind == "language_model" or is_causal(config, spec.endswith(".gguf")):
        return CausalLM(AutoModelForCausalLM.from_config(config, attn_implementation="eager"))
    backbone = AutoModel.from_config(config, attn_implementation="eager")
    return TextEncoder(backbone) if kind == "retrieval" else TextClassifier(backbone, num_classes)


def hf_workload(spec: str, seq_len: int = 128, num_classes: int = 2) -> Workload:
    """A Hugging Face config on its natural task: next-token prediction for a causal model,
    classification with a linear head on the mean-pooled states for an encoder."""
    config = _config(spec)
    causal = is_causal(config, spec.endswith(".gguf"))
    vocab = config.vocab_size

    def build():
        return hf_model(spec, "language_model" if causal else "classification", num_classes)

    def batch(n):
        x = torch.randint(1, vocab, (n, seq_len))
        return x, torch.randint(0, vocab, (n, seq_len)) if causal else torch.randint(0, num_classes, (n,))

    def loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    return Workload(
        Path(spec).name, build, batch, loss, kv_cache=_kv_bytes(config, seq_len) if causal else None
    )


def _kv_bytes(config, seq_len: int):
    """K and V per layer: (batch, kv heads, sequence, head width) in the config's dtype."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    width = torch.finfo(getattr(config, "torch_dtype", None) or torch.float32).bits // 8
    return lambda n: 2 * layers * n * kv_heads * seq_len * head_dim * width
