"""Language modelling on pydoc_data: held-out topics, perplexity numbers, an end-to-end recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pare
from pare.data.text import load_pydoc_lm
from pare.errors import ConfigError
from pare.recipes import recipe_from_dict
from pare.tasks import get_task


def test_lm_windows_hold_out_whole_topics():
    ds = load_pydoc_lm(context=32, vocab_size=512, seed=0, val=0.1, test=0.1)
    n_test, n_val = ds.part_sizes
    assert ds.X.shape[1] == ds.y.shape[1] == 32 and ds.vocab == 512
    assert np.array_equal(ds.X[:, 1:], ds.y[:, :-1])  # targets are the inputs shifted by one
    assert 0.05 < n_test / len(ds.X) < 0.2 and n_val > 0
    assert ds.X.max() < 512


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    task = get_task("language_model")
    part = pare.data.Part(torch.zeros(4, 5, dtype=torch.long), torch.randint(0, 7, (4, 5)))
    outputs = task.outputs(lambda x: torch.zeros(len(x), 5, 7), part)  # equal logits: p = 1/7
    ev = task.score(part.y.numpy(), outputs, bootstrap=100)
    assert ev.metrics["perplexity"] == pytest.approx(7.0, rel=1e-5)
    assert ev.metrics["nll"] == pytest.approx(math.log(7), rel=1e-5)
    assert ev.metrics["perplexity_ci95"] == pytest.approx([7.0, 7.0], rel=1e-5)
    assert task.paired(part.y.numpy(), outputs, outputs, n_boot=50)["perplexity_delta_ci95"] == [0.0, 0.0]


def test_lm_source_needs_no_pretrained_model_but_retrieval_does():
    recipe_from_dict({"data": {"source": "pydoc_lm"}, "model": {"name": "gpt"}})
    with pytest.raises(ConfigError, match="model.hf: data source 'pydoc_retrieval' is text"):
        recipe_from_dict({"data": {"source": "pydoc_retrieval"}, "model": {"name": "gpt"}})


@pytest.mark.slow
def test_gpt_recipe_trains_and_gptq_stays_closer_than_rtn(tmp_path):
    recipe = pare.load_recipe("gpt_pydoc").to_dict()
    recipe["data"].update(max_length=32, vocab_size=512)
    recipe["model"]["args"] = {"dim": 64, "depth": 2, "heads": 4}
    recipe["train"].update(epochs=4, patience=None)
    recipe["evaluate"].update(latency_batch=4, latency_repeats=5, bootstrap=200, onnx=False)
    for stage in recipe["stages"]:
        stage.update(bits=3)
    results = pare.run(recipe, tmp_path)
    base, rtn, gptq = results["stages"]
    assert results["task"]["kind"] == "language_model"
    assert base["metrics"]["perplexity"] < 200  # far below the 512 of guessing
    assert base["history"]["epochs"][-1]["train_loss"] < base["history"]["epochs"][0]["train_loss"]
    increase = {s["name"]: s["metrics"]["perplexity"] - base["metrics"]["perplexity"] for s in (rtn, gptq)}
    assert 0 <= increase["int4-gptq"] < increase["int4-rtn"]
    assert rtn["comparison"]["size_ratio"] > 2.5
    assert "perplexity" in (tmp_path / "report.md").read_text()


def test_kl_and_top_tokens_work_with_a_vocabulary_smaller_than_the_top_k():
    task = get_task("language_model")
    part = pare.data.Part(torch.zeros(3, 4, dtype=torch.long), torch.randint(0, 5, (3, 4)))
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    ref = task.outputs(lambda x: a, part)
    paired = task.paired(part.y.numpy(), task.outputs(lambda x: b, part, reference=ref), ref, n_boot=20)
    p, q = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    full = (p.exp() * (p - q)).sum(-1).mean().item()  # all 5 tokens are among the top: exact
    assert paired["kl_divergence"] == pytest.approx(full, rel=1e-5)
    assert paired["kl_top_mass"] == pytest.approx(1.0, abs=1e-6)
