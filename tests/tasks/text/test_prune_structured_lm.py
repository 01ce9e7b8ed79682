"""Structured pruning of pretrained decoders: whole blocks dropped by their measured influence,
grouped-query heads and MLP neurons removed, and the config rewritten so the smaller model
saves, reloads in transformers to the same logits and generates with its KV cache."""

from __future__ import annotations

import json

import pytest
import torch

import pare
from pare.cli import main
from pare.errors import ConfigError, UnsupportedModelError
from pare.recipes.pipeline import stage_model
from pare.techniques.prune.hf_config import sync_configs
from pare.techniques.prune.transformer import attention_heads, ffn_neurons
from tests.tasks.text.conftest import tiny_causal_lm
from tests.tasks.text.test_causal_lm import lm_recipe


def _lm(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


IDS = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_removed_query_group_equals_its_weights_zeroed(tmp_path, arch):
    """Removing key/value head 1 with its two query heads gives the logits of the full model
    whose slices of that group are zero: the GQA unit is sliced consistently in q, k, v and o."""
    lm = _lm(tiny_causal_lm(tmp_path / arch, arch))
    units = attention_heads(lm)
    assert [u.name for u in units] == ["model.layers.0", "model.layers.1"]
    assert units[0].count(lm) == 2 and units[0].width == 16  # 2 KV heads, each read by 2 query heads of 8
    zeroed = _lm(tmp_path / arch)
    with torch.no_grad():
        for u in attention_heads(zeroed):
            for m, dim, idx in u.slices(zeroed, 1):
                m.weight.narrow(dim, idx.start, idx.stop - idx.start).zero_()
                if dim == 0 and m.bias is not None:  # Qwen2's q/k/v biases
                    m.bias[idx] = 0
        for u in units:
            u.keep(lm, [0])
    sync_configs(lm)
    assert (lm.config.num_attention_heads, lm.config.num_key_value_heads, lm.config.head_dim) == (2, 1, 8)
    assert torch.allclose(lm(IDS).logits, zeroed(IDS).logits, atol=1e-5)


def _run(tmp_path, arch, stages):
    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / arch, arch, num_hidden_layers=4))})
    recipe["stages"] = stages
    return pare.run(recipe, tmp_path / "run")


def test_depth_and_width_pruning_save_a_smaller_config_that_transformers_reloads(tmp_path):
    prune = {"technique": "prune", "from": "baseline"}
    results = _run(
        tmp_path,
        "qwen2",  # biases on q/k/v and a per-layer layer_types list
        [
            {
                **prune,
                "name": "depth",
                "method": "blocks",
                "criterion": "cosine",
                "amount": 0.5,
                "calibration_samples": 8,
            },
            {**prune, "name": "width", "method": "ffn", "amount": 0.25, "criterion": "l2"},
            {**prune, "name": "heads", "from": "width", "method": "heads", "amount": 0.5, "criterion": "l2"},
        ],
    )
    base, depth, width, heads = results["stages"]
    scores = {s["block"]: s["influence"] for s in depth["info"]["block_scores"]}
    assert len(scores) == 4 and all(0 <= v <= 2 for v in scores.values())
    lowest = sorted(scores, key=scores.get)[:2]
    assert sorted(depth["info"]["dropped_blocks"]) == sorted(lowest)  # the two that turn the state least
    assert depth["info"]["config_changes"]["num_hidden_layers"] == [4, 2]
    assert width["info"]["config_changes"] == {"intermediate_size": [64, 48]}
    assert heads["info"]["config_changes"]["num_key_value_heads"] == [2, 1]
    for stage in (depth, width, heads):
        assert stage["cost"]["params"] < base["cost"]["params"]
        assert stage["cost"]["generation"]["prompts"][0]["decode_tokens_per_s"] > 0  # with the KV cache
    stages = tmp_path / "run" / "stages"
    for folder, layers in (("01-depth", 2), ("03-heads", 4)):
        out = tmp_path / f"hf-{folder}"
        assert main(["checkpoint", str(stages / folder), "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["num_hidden_layers"] == layers and len(config["layer_types"]) == layers
        loaded = _lm(out)
        assert torch.allclose(loaded(IDS).logits, stage_model(stages / folder)[0](IDS), atol=1e-5)
    assert (config["intermediate_size"], config["num_attention_heads"], config["head_dim"]) == (48, 2, 8)


def test_gpt2_drops_blocks_and_narrows_its_mlp_but_keeps_its_heads(tmp_path):
    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / "gpt2", "gpt2", n_layer=3))})
    prune = {"technique": "prune", "from": "baseline"}
    recipe["stages"] = [
        {**prune, "name": "depth", "method": "blocks", "amount": 0.34},  # by validation perplexity
        {**prune, "name": "width", "method": "ffn", "amount": 0.5},
    ]
    _, depth, width = pare.run(recipe, tmp_path / "run")["stages"]
    assert len(depth["info"]["dropped_blocks"]) == 1 and "score_drop" in depth["info"]["block_scores"][0]
    assert depth["info"]["config_changes"]["num_hidden_layers"] == [3, 2]
    assert width["info"]["config_changes"] == {"n_inner": [None, 64]}
    recipe["stages"] = [{**prune, "name": "heads", "method": "heads"}]
    with pytest.raises(UnsupportedModelError, match="found no attention module of a layout pare knows"):
        pare.run(recipe, tmp_path / "run2")
    from pare.models.hf import load_hf  # its Conv1D layers made Linear, as every stage sees them

    assert ffn_neurons(load_hf(tmp_path / "gpt2"))[0].inputs == ["transformer.h.0.mlp.c_fc"]


def test_widths_a_config_cannot_describe_are_refused(tmp_path):
    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / "llama", "llama"))})
    recipe["stages"] = [{"technique": "prune", "name": "g", "method": "ffn", "scope": "global"}]
    with pytest.raises(ConfigError, match="scope: 'global' leaves the layers of a Hugging Face model"):
        pare.run(recipe, tmp_path / "run")


def test_wanda_scores_a_unit_by_its_output_columns_times_their_input_norms(tmp_path):
    from pare.techniques.prune.criteria import input_norms
    from pare.techniques.prune.transformer import unit_scores

    lm = _lm(tiny_causal_lm(tmp_path / "llama", "llama", initializer_range=0.25))
    for find, proj, width in ((ffn_neurons, "mlp.down_proj", 1), (attention_heads, "self_attn.o_proj", 16)):
        unit = find(lm)[1]
        out = lm.get_submodule(f"model.layers.1.{proj}")
        seen = []
        hook = out.register_forward_hook(lambda m, a, o, seen=seen: seen.append(a[0].detach()))
        norms = input_norms(lm, [out], [IDS[:1], IDS[1:]])  # two batches, summed
        hook.remove()
        x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
        assert torch.allclose(norms[out], x.norm(dim=0), rtol=1e-5)
        by_hand = (out.weight.abs() * x.norm(dim=0)).sum(0).reshape(-1, width).sum(1)
        assert torch.allclose(unit_scores(lm, unit, "wanda", norms=norms), by_hand, rtol=1e-4)


def test_wanda_width_pruning_keeps_what_the_data_uses(tmp_path):
    prune = {"technique": "prune", "from": "baseline", "method": "ffn", "amount": 0.5}
    # weights drawn wide (std 0.25): a random decoder whose MLPs matter
    lm = tiny_causal_lm(tmp_path / "llama", "llama", num_hidden_layers=4, initializer_range=0.25)
    recipe = lm_recipe({"hf": str(lm)})
    recipe["stages"] = [
        {**prune, "name": "l2", "criterion": "l2"},
        {**prune, "name": "wanda", "criterion": "wanda", "calibration_samples": 16},
    ]
    _, l2, wanda = pare.run(recipe, tmp_path / "run")["stages"]
    assert wanda["info"]["config_changes"] == {"intermediate_size": [64, 32]}
    assert wanda["comparison"]["kl_divergence"] < 0.8 * l2["comparison"]["kl_divergence"]
