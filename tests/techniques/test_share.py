"""Weight sharing: few distinct values per layer that stay tied through fine-tuning, close to the
original with enough clusters, an artifact that really shrinks and reloads exactly, hashing."""

import copy

import pytest
import torch
import torch.nn as nn

import pare
from pare.config import from_dict
from pare.errors import ConfigError
from pare.export import save_weights
from pare.formats.codebook import hash_tying, kmeans_1d
from pare.formats.packed import load_packed
from pare.techniques.prune import PruneConfig
from pare.techniques.share import ShareConfig
from pare.techniques.share.apply import export
from pare.techniques.share.tying import TiedWeights, group_mean, kmeans_tying
from pare.training import TrainState
from tests.helpers import accuracy, trained


@pytest.fixture(scope="module")
def mlp(digits_split):
    return trained(digits_split, "mlp", epochs=10, width=64, depth=2)


def weights(model):
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def test_kmeans_is_exact_on_few_values_and_ties_groups_to_their_means():
    values = torch.tensor([0.0, 1.0, 1.0, 5.0]).numpy()
    assert list(kmeans_1d(values, 4)) == [0.0, 1.0, 5.0]
    w = torch.tensor([[0.0, 1.0], [1.2, -3.0]])
    t = kmeans_tying(w, 2, keep_zeros=True, seed=0)
    assert t.frozen == 0 and t.size == 3 and t.codes[0, 0] == 0
    assert torch.allclose(group_mean(w, t), torch.tensor([0.0, -3.0, 1.1]))
    # the gradient of a group is its mean; the frozen zero gets none
    hook = TiedWeights([(nn.Parameter(w.clone()), t)])
    hook.on_train_start(TrainState(model=None, optimizer=None, config=None))
    p = hook.tied[0][0]
    (p * torch.tensor([[5.0, 1.0], [3.0, 7.0]])).sum().backward()
    assert torch.allclose(p.grad, torch.tensor([[0.0, 2.0], [2.0, 7.0]]))


def test_hashing_signs_and_codes_come_from_the_seed_alone():
    a, b = hash_tying((6, 5), 4, seed=3), hash_tying((6, 5), 4, seed=3)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.signs, b.signs)
    assert a.codes.max() < 4 and set(a.signs.unique().tolist()) == {-1.0, 1.0}


def test_shared_model_has_few_values_stays_tied_and_ships_small(mlp, digits_split, tmp_path):
    config = ShareConfig(clusters=16, finetune_epochs=2)
    shared, info = pare.compress(mlp, config, digits_split)
    for w in weights(shared).values():
        assert len(w.unique()) <= 16  # still tied after fine-tuning the shared values
    assert accuracy(shared, digits_split.test) > accuracy(mlp, digits_split.test) - 0.03
    shipped = export(shared, config, info, tmp_path, digits_split.test.X[:1])
    n_weights = sum(w.numel() for w in weights(mlp).values())
    others = sum(p.numel() for n, p in mlp.named_parameters() if not n.endswith("weight"))
    size = shipped["artifact"].stat().st_size
    assert size <= n_weights / 2 + others * 4 + 3 * 16 * 4 + 2048  # 4-bit codes, fp32 codebooks, header
    assert size < save_weights(mlp, tmp_path / "dense.safetensors") / 5
    plain = load_packed(copy.deepcopy(mlp), shipped["artifact"])
    x = digits_split.test.X
    assert torch.equal(plain(x), shared(x))


def test_enough_clusters_reproduce_the_original_closely(mlp, digits_split):
    shared, info = pare.compress(mlp, ShareConfig(clusters=256), digits_split)
    assert max(r["relative_error"] for r in info["layers"]) < 0.02
    x = digits_split.test.X
    assert (shared(x).argmax(1) == mlp(x).argmax(1)).float().mean() > 0.99


def test_pruned_zeros_stay_zero_and_entropy_coding_exploits_them(mlp, digits_split, tmp_path):
    sparse, _ = pare.compress(mlp, PruneConfig(method="unstructured", amount=0.9), digits_split)
    config = ShareConfig(clusters=15, finetune_epochs=1)
    shared, info = pare.compress(sparse, config, digits_split)
    for name, w in weights(shared).items():
        assert torch.equal(w == 0, weights(sparse)[name] == 0)
    coded = export(shared, config, info, tmp_path, digits_split.test.X[:1])["artifact"].stat().st_size
    (tmp_path / "plain").mkdir()
    plain_config = ShareConfig(clusters=15, entropy_coding=False)
    plain = (
        export(shared, plain_config, info, tmp_path / "plain", digits_split.test.X[:1])["artifact"]
        .stat()
        .st_size
    )
    assert coded < 0.6 * plain
    assert torch.equal(
        load_packed(copy.deepcopy(mlp), tmp_path / "model.shared.safetensors.xz")(digits_split.test.X),
        shared(digits_split.test.X),
    )


def test_hashed_layers_store_only_their_shared_values(mlp, digits_split, tmp_path):
    config = ShareConfig(method="hash", compression=8, finetune_epochs=2)
    hashed, info = pare.compress(mlp, config, digits_split)
    shipped = export(hashed, config, info, tmp_path, digits_split.test.X[:1])
    layer_weights = sum(w.numel() for w in weights(mlp).values())
    others = sum(p.numel() for n, p in mlp.named_parameters() if not n.endswith("weight"))
    assert shipped["artifact"].stat().st_size < (layer_weights / 8 + others) * 4 + 4096
    x = digits_split.test.X
    assert torch.allclose(load_packed(copy.deepcopy(mlp), shipped["artifact"])(x), hashed(x), atol=1e-6)


def test_cluster_counts_out_of_range_are_named():
    with pytest.raises(ConfigError, match="clusters: 1 must be >= 2"):
        from_dict(ShareConfig, {"clusters": 1})
    with pytest.raises(ConfigError, match="clusters: 300 must be <= 256"):
        from_dict(ShareConfig, {"clusters": 300})
    with pytest.raises(ConfigError, match="method: 'kmean' is not one of .*did you mean 'kmeans'"):
        from_dict(ShareConfig, {"method": "kmean"})
