"""Healing language models: token-level distillation (the KD term against a hand computation,
the teacher's top-k cache, a depth-pruned decoder pulled back towards the unpruned one) and
LoRA adapters saved in PEFT's layout that PEFT loads to the stage's logits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import pare
from pare.errors import ConfigError
from pare.techniques.distill import apply as distill_apply
from pare.techniques.distill.losses import feature_loss, token_kd_loss
from tests.tasks.text.conftest import tiny_causal_lm
from tests.tasks.text.test_causal_lm import lm_recipe


def test_token_kd_is_the_kl_over_scored_positions_and_top_k_of_all_tokens_is_the_full_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    scored = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    temp = 2.0
    by_hand = (
        torch.stack(
            [
                F.kl_div(F.log_softmax(s[b, i] / temp, -1), F.softmax(t[b, i] / temp, -1), reduction="sum")
                for b in range(2)
                for i in range(5)
                if scored[b, i]
            ]
        ).mean()
        * temp**2
    )
    assert token_kd_loss(s, t, scored, temp) == pytest.approx(float(by_hand), rel=1e-5)
    logp = F.log_softmax(t / temp, -1)
    top, ids = logp.topk(11, dim=-1)  # all tokens: the full KL
    assert token_kd_loss(s, top, scored, temp, ids) == pytest.approx(float(by_hand), rel=1e-5)
    assert token_kd_loss(t, t, scored, temp) == pytest.approx(0, abs=1e-6)
    top3, ids3 = logp.topk(3, dim=-1)  # 3 tokens and the rest: a lower bound, 0 for the teacher itself
    assert 0 < token_kd_loss(s, top3, scored, temp, ids3) < by_hand
    assert token_kd_loss(t, top3, scored, temp, ids3) == pytest.approx(0, abs=1e-6)


def small_corpus(folder, topics: int = 20):
    """A folder of pydoc topics, one file each: a text source small enough to train on in seconds."""
    from pare.data.text import pydoc_topics

    folder.mkdir()
    for i, text in enumerate(list(pydoc_topics().values())[:topics]):
        (folder / f"{i:02d}.txt").write_text(text)
    return folder


def heal_depth_pruned(tmp_path, **distill) -> dict:
    """A 4-block tiny Llama, half its blocks dropped, then healed by ``distill`` from the
    unpruned model (3 epochs on pydoc topics): the run's results."""
    # weights drawn wide (std 0.25): a random decoder whose blocks matter, so dropping two shows
    lm = tiny_causal_lm(tmp_path / "llama", "llama", num_hidden_layers=4, initializer_range=0.25)
    recipe = lm_recipe({"hf": str(lm)}, source="text", path=str(small_corpus(tmp_path / "text")))
    recipe["train"] = {"batch_size": 8, "patience": None}
    recipe["stages"] = [
        {"technique": "prune", "name": "depth", "method": "blocks", "criterion": "cosine", "amount": 0.5},
        {"technique": "distill", "name": "healed", "teachers": [{"stage": "baseline"}], "top_k": 16}
        | {"epochs": 3, "lr": 3e-3, **distill},
    ]
    return pare.run(recipe, tmp_path / "run")


def test_kd_heals_a_depth_pruned_decoder_towards_the_unpruned_one(tmp_path):
    results = heal_depth_pruned(tmp_path, temperature=1.0, alpha=1.0)
    base, depth, healed = results["stages"]
    assert healed["cost"]["params"] == depth["cost"]["params"] < base["cost"]["params"]
    assert healed["comparison"]["kl_divergence"] < 0.8 * depth["comparison"]["kl_divergence"]
    assert healed["comparison"]["same_top_token"] > depth["comparison"]["same_top_token"]
    info = healed["info"]
    assert info["student"] == "the stage's input model" and info["teachers"][0]["source"] == "stage baseline"
    assert info["teacher_cache_bytes"] % (64 * 16 * 8) == 0  # per position: 16 float32 logits, 16 int32 ids
    epochs = healed["history"]["epochs"]
    assert epochs[-1]["kd"] < epochs[0]["kd"]


def test_hidden_state_matching_leaves_padding_out():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    kept = torch.tensor([[True, True, True, False, False], [True] * 5])
    padded = s.clone()
    padded[0, 3:] += 100.0  # what padding positions hold must not matter
    assert feature_loss(padded, t, "mse", kept) == pytest.approx(float(((s - t)[kept] ** 2).mean()), rel=1e-6)
    cosine = 1 - F.cosine_similarity(s[kept], t[kept], dim=-1).mean()  # per position
    assert feature_loss(padded, t, "cosine", kept) == pytest.approx(float(cosine), rel=1e-6)
    assert feature_loss(padded, t, "mse") > 100  # unmasked, the padding dominates


def test_hidden_states_of_a_depth_pruned_decoder_are_pulled_to_the_unpruned_one_s(tmp_path):
    # the last block's output on both sides: 4 blocks in the teacher, 2 in the student
    features = [{"teacher": "model.model.layers.3", "student": "model.model.layers.1"}]
    results = heal_depth_pruned(tmp_path, alpha=0.5, features=features)
    healed = results["stages"][2]
    assert healed["info"]["adapter_params"] == 0  # same width: matched directly, no projection
    epochs = healed["history"]["epochs"]
    term = "feat:model.model.layers.1"
    assert epochs[2][term] < epochs[1][term] < 0.9 * epochs[0][term]
    assert healed["comparison"]["kl_divergence"] < results["stages"][1]["comparison"]["kl_divergence"]


def test_what_token_distillation_cannot_take_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import yaml

    from pare.cli import main

    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / "llama", "llama"))})
    kd = {"technique": "distill", "name": "kd", "teachers": [{"stage": "baseline"}]}
    recipe["stages"] = [{**kd, "teachers": [{"stage": "baseline"}] * 2, "crd": {"weight": 0.5}}]
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(tmp_path / "kd.yaml"), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "Traceback" not in err
    assert "stages[0].crd: contrasts one embedding per sample" in err
    assert "stages[0].teachers: a language model learns from one teacher; got 2" in err
    recipe["stages"] = [{**kd, "student": {"shrink": 0.5}}]
    with pytest.raises(ConfigError, match="student.shrink: prunes channels through a traced graph"):
        pare.run(recipe, tmp_path / "a")
    monkeypatch.setattr(distill_apply, "CACHE_LIMIT", 1000)
    recipe["stages"] = [kd]
    with pytest.raises(ConfigError, match=r"top_k: caching the teacher's whole next-token distributions"):
        pare.run(recipe, tmp_path / "b")


def test_lora_adapters_saved_in_peft_layout_load_onto_the_base_to_the_stage_s_logits(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from pare.recipes.pipeline import stage_model

    folder = tiny_causal_lm(tmp_path / "llama", "llama", tie_word_embeddings=True, initializer_range=0.25)
    recipe = lm_recipe({"hf": str(folder)}, source="text", path=str(small_corpus(tmp_path / "text", 8)))
    recipe["train"] = {"batch_size": 8, "patience": None}
    lora = {"technique": "lora", "rank": 4, "finetune_epochs": 1, "finetune_lr": 1e-2}
    recipe["stages"] = [
        {**lora, "name": "qv", "layers": ["*q_proj", "*v_proj"]},
        {**lora, "name": "all", "from": "baseline"},
    ]
    _, qv, every = pare.run(recipe, tmp_path / "run")["stages"]
    assert len(qv["info"]["layers"]) == 4 and every["info"]["frozen_tied"] == ["model.lm_head"]
    assert "model.lm_head" not in every["info"]["layers"] and len(every["info"]["layers"]) == 14
    stage = tmp_path / "run" / "stages" / "01-qv"
    config = json.loads((stage / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"][0] == "model.layers.0.self_attn.q_proj"
    base = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(1))
    before = base(ids).logits
    tuned = peft.PeftModel.from_pretrained(base, stage / "adapter").eval()
    with torch.no_grad():
        logits = tuned(input_ids=ids).logits
        assert not torch.allclose(logits, before, atol=1e-4)  # the adapters were trained
        assert torch.allclose(logits, stage_model(stage)[0](ids), atol=1e-5)
