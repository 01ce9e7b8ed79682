"""Low-rank factorization: exact at full rank for every layer kind, merges back, really shrinks
the model and its file, reloads, exports, and names a rank the layer cannot take."""

import copy

import pytest
import torch
import torch.nn as nn

import pare
from pare.config import from_dict
from pare.errors import ConfigError
from pare.export import export_onnx, onnx_predict, ort_session, save_weights
from pare.techniques.lowrank import LowRankConfig
from pare.techniques.lowrank.apply import restore
from pare.techniques.lowrank.factorize import energy_rank, factorize, factorized_params, max_ranks, merge
from tests.helpers import accuracy, trained


@pytest.fixture(scope="module")
def cnn(digits_split):
    return trained(digits_split, "cnn", epochs=10, width=16)


@pytest.mark.parametrize(
    "layer, kind, x",
    [
        (nn.Linear(20, 12), "svd", (3, 20)),
        (nn.Conv2d(6, 10, 3, stride=2, padding=1), "spatial", (2, 6, 9, 9)),
        (nn.Conv2d(6, 10, (3, 5), padding=(1, 2), dilation=(2, 1)), "spatial", (2, 6, 9, 9)),
        (nn.Conv2d(6, 10, 3, stride=2, padding=1), "tucker2", (2, 6, 9, 9)),
        (nn.Conv2d(6, 10, 1), "spatial", (2, 6, 5, 5)),
    ],
)
def test_full_rank_reproduces_the_layer_and_merge_undoes_it(layer, kind, x):
    torch.manual_seed(0)
    x = torch.randn(*x)
    f = factorize(layer, kind, max_ranks(layer, kind))
    with torch.no_grad():
        assert torch.allclose(f(x), layer(x), atol=1e-5)
        merged = merge(f)
        assert type(merged) is type(layer) and merged.weight.shape == layer.weight.shape
        assert torch.allclose(merged(x), layer(x), atol=1e-5)
    # a lower rank costs what the formula says
    low = [max(1, r // 3) for r in max_ranks(layer, kind)]
    small = factorize(layer, kind, low)
    assert (
        sum(m.weight.numel() for m in small)
        == factorized_params(layer, kind, low)
        < layer.weight.numel() * 1.5
    )


def test_energy_rank_keeps_the_asked_share_of_squared_singular_values():
    s = torch.tensor([4.0, 3.0])  # energy shares 16/25 = 0.64, then 1.0
    assert energy_rank(s, 0.6) == 1 and energy_rank(s, 0.64) == 1 and energy_rank(s, 0.7) == 2


def test_factorized_cnn_is_smaller_in_params_bytes_and_flops_and_reloads(cnn, digits_split, tmp_path):
    config = LowRankConfig(energy=0.9, finetune_epochs=2)
    small, info = pare.compress(cnn, config, digits_split)
    before, after = pare.profile(cnn, digits_split.test.X[:1]), pare.profile(small, digits_split.test.X[:1])
    assert after["params"] < 0.9 * before["params"] and after["flops"] < 0.9 * before["flops"]
    assert save_weights(small, tmp_path / "s.safetensors") < 0.9 * save_weights(
        cnn, tmp_path / "c.safetensors"
    )
    assert accuracy(small, digits_split.test) > accuracy(cnn, digits_split.test) - 0.05
    assert {r["kind"] for r in info["layers"]} <= {"tucker2", "svd", "spatial"}
    assert all(r["energy_kept"] >= 0.9 - 1e-9 for r in info["layers"])
    # resume: the structure rebuilt from info takes the saved weights
    rebuilt = restore(copy.deepcopy(cnn), config, info)
    rebuilt.load_state_dict(small.state_dict())
    x = digits_split.test.X[:8]
    assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)
    export_onnx(small, x[:1], tmp_path / "s.onnx")
    assert torch.allclose(
        torch.from_numpy(onnx_predict(ort_session(tmp_path / "s.onnx"), x.numpy())), small(x), atol=1e-4
    )


def test_ratio_bounds_every_layer_and_merge_restores_plain_layers(cnn, digits_split):
    small, info = pare.compress(cnn, LowRankConfig(rank_by="ratio", ratio=0.4), digits_split)
    assert info["layers"] and all(r["weights_after"] <= 0.4 * r["weights_before"] for r in info["layers"])
    merged, minfo = pare.compress(cnn, LowRankConfig(rank_by="ratio", ratio=0.4, merge=True), digits_split)
    assert {type(m) for m in merged.modules()} == {type(m) for m in cnn.modules()}
    x = digits_split.test.X[:8]
    assert torch.allclose(merged(x), small(x), atol=1e-4)


def test_sensitivity_keeps_each_layer_within_the_drop(cnn, digits_split):
    small, info = pare.compress(cnn, LowRankConfig(rank_by="sensitivity", max_drop=2.0), digits_split)
    assert info["layers"] or info["note"]
    for row in info.get("skipped_layers", []):
        assert "max_drop=2.0" in row["reason"] or "saves no parameters" in row["reason"]


def test_bad_ranks_and_keys_are_named(cnn, digits_split):
    with pytest.raises(ConfigError, match=r"rank: 64 is larger than layer 'features.0.0' allows"):
        pare.compress(cnn, LowRankConfig(rank_by="rank", rank=64), digits_split)
    with pytest.raises(ConfigError, match="rank_by 'rank' needs rank"):
        from_dict(LowRankConfig, {"rank_by": "rank"})
    with pytest.raises(ConfigError, match="energy: 1.5 must be <= 1"):
        from_dict(LowRankConfig, {"energy": 1.5})
    with pytest.raises(ConfigError, match="layers: 'head.9' matches no layer"):
        pare.compress(cnn, LowRankConfig(layers=["head.9"]), digits_split)


def test_defaults_fine_tune_and_a_costly_cut_is_warned_about(cnn, digits_split):
    """Issue 21: the defaults fine-tune the factors; a stage that still loses more than warn_drop
    validation points says so, with what to change."""
    _, info = pare.compress(cnn, LowRankConfig(), digits_split)
    assert len(info["history"].epochs) == 2 and "warning" not in info
    assert info["val_drop"] <= 1.0
    _, harsh = pare.compress(cnn, LowRankConfig(rank_by="rank", rank=1, finetune_epochs=0), digits_split)
    assert harsh["val_drop"] > 5 and "lost" in harsh["warning"] and "finetune_epochs" in harsh["warning"]
