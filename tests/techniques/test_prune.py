"""Pruning: criteria and schedules with numbers, structured surgery through real graphs,
storage that really shrinks, reload, export, and clear reports of what could not be pruned."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import pare
from pare.cost import count_flops, count_params
from pare.errors import ConfigError, UnsupportedModelError
from pare.export import export_onnx, onnx_predict, ort_session, save_weights
from pare.formats.sparse import load_sparse, save_sparse
from pare.graph.surgery import reshape
from pare.models.config import ModelConfig
from pare.recipes import recipe_from_dict
from pare.recipes.schema import TrainConfig
from pare.techniques.prune import PruneConfig
from pare.techniques.prune.apply import schedule
from pare.techniques.prune.blocks import drop, residual_blocks
from pare.techniques.prune.criteria import activation_entropy, channel_scores
from pare.techniques.prune.transformer import attention_heads, ffn_neurons
from pare.techniques.prune.unstructured import n_m_masks, threshold_masks
from tests.helpers import trained


@pytest.fixture(scope="module")
def resnet(digits_split):
    return trained(digits_split, "resnet", width=16, depth=1)


def test_schedules():
    assert [round(schedule(t, 4, 0.8, "linear"), 3) for t in range(1, 5)] == [0.2, 0.4, 0.6, 0.8]
    cubic = [schedule(t, 4, 0.8, "cubic") for t in range(1, 5)]
    assert cubic[0] == pytest.approx(0.8 * (1 - 0.75**3)) and cubic[-1] == pytest.approx(0.8)
    assert cubic[0] > 0.2  # cubic removes most early


def test_channel_criteria_numbers():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).reshape(3, 1, 1, 1))
    assert channel_scores(conv, "l1").tolist() == [1.0, 2.0, 3.0]
    grads = {conv: torch.tensor([2.0, 1.0, 0.0]).reshape(3, 1, 1, 1)}
    assert channel_scores(conv, "taylor", grads).tolist() == [2.0, 2.0, 0.0]
    constant = torch.ones(100, 2, 4, 4)
    constant[:, 1] = torch.randn(100, 1, 1) * torch.ones(4, 4)  # channel 1 varies across samples
    ent = activation_entropy(constant)
    assert ent[0] == 0 and ent[1] > 1.0


def test_masks_global_layer_and_n_m():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) * 10}
    layer = threshold_masks(scores, 0.5, "layer")
    assert layer["a"].sum() == 5 and layer["b"].sum() == 5
    glob = threshold_masks(scores, 0.5, "global")
    assert glob["a"].sum() + glob["b"].sum() == 10 and glob["b"].sum() > glob["a"].sum()
    nm = n_m_masks({"w": torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])}, 2, 4)
    assert nm["w"].tolist() == [[1, 0, 1, 0, 0, 1, 1, 0]]


def test_sparse_storage_shrinks_the_file_and_round_trips(tmp_path, digits_split):
    model = trained(digits_split, "mlp", epochs=1, width=256, depth=2)
    q, _ = pare.compress(model, PruneConfig(method="unstructured", amount=0.8), digits_split)
    dense = save_weights(q, tmp_path / "dense.safetensors")
    sparse = save_sparse(q, tmp_path / "sparse.safetensors")
    assert sparse < 0.3 * dense  # 20 % of the values plus one bit per weight
    back = load_sparse(copy.deepcopy(model), tmp_path / "sparse.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), q.state_dict().values()))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_structured_pruning_makes_every_zoo_model_smaller(tmp_path, digits_split, name):
    model = trained(digits_split, name, epochs=2)
    q, info = pare.compress(model, PruneConfig(target="macs", amount=0.5), digits_split)
    x = digits_split.test.X[:5]
    assert q(x).shape == model(x).shape
    assert count_params(q)["params"] < 0.7 * count_params(model)["params"]
    assert count_flops(q, x[:1]) <= 0.52 * count_flops(model, x[:1])
    assert info["macs_removed"] == pytest.approx(0.5, abs=0.02)
    assert save_weights(q, tmp_path / "q.safetensors") < 0.7 * save_weights(model, tmp_path / "m.safetensors")
    # the pruned structure is rebuilt from the record, then the saved weights load into it
    fresh = reshape(pare.build_model(ModelConfig(name=name), digits_split.input_shape, 10), info["shapes"])
    pare.export.load_weights_file(fresh, tmp_path / "q.safetensors")
    assert torch.allclose(fresh.eval()(x), q(x), atol=1e-5)
    # and it exports to ONNX and runs there
    export_onnx(q, x[:1], tmp_path / "q.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(
            onnx_predict(ort_session(tmp_path / "q.onnx"), x.numpy()), q(x).numpy(), atol=1e-4
        )


def test_user_model_with_residual_and_concat(digits_split):
    model = trained(digits_split, factory="tests.fixtures.user_models:two_branch", epochs=2, hidden=16)
    q, info = pare.compress(model, PruneConfig(amount=0.5), digits_split)
    # stem and left are tied by the residual addition; the concatenation feeds the head
    assert q.stem.out_channels == q.left.out_channels == q.left.in_channels == q.right.in_channels == 8
    assert q.head.in_features == q.left.out_channels + q.right.out_channels
    assert q(digits_split.test.X[:3]).shape == (3, 10)


def test_residual_blocks_are_found_and_dropped_by_measured_cost(tmp_path, digits_split):
    model = trained(digits_split, "resnet", epochs=3, width=8, depth=2, stages=3)
    # the first block of stages 2 and 3 changes shape (stride, projection): not droppable
    assert residual_blocks(model, digits_split.test.X[:2]) == ["blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    q, info = pare.compress(model, PruneConfig(method="blocks", target="macs", amount=0.3), digits_split)
    assert info["macs_removed"] >= 0.3 and len(info["dropped_blocks"]) >= 1
    assert {s["block"] for s in info["block_scores"]} == {"blocks.0", "blocks.1", "blocks.3", "blocks.5"}
    assert all(isinstance(q.blocks[int(b.split(".")[1])], nn.Identity) for b in info["dropped_blocks"])
    assert q(digits_split.test.X[:3]).shape == (3, 10)
    # rebuilt for reloading from the record
    save_weights(q, tmp_path / "q.safetensors")
    fresh = drop(
        trained(digits_split, "resnet", epochs=0, width=8, depth=2, stages=3), info["dropped_blocks"]
    )
    pare.export.load_weights_file(fresh, tmp_path / "q.safetensors")
    assert torch.allclose(fresh.eval()(digits_split.test.X[:3]), q(digits_split.test.X[:3]), atol=1e-5)


def test_transformer_ffn_neurons_are_removed_and_attention_left_alone(digits_split):
    model = trained(digits_split, "transformer", epochs=1, depth=2)
    q, info = pare.compress(model, PruneConfig(amount=0.5), digits_split)
    for block in q.blocks:
        assert block.mlp[0].out_features == block.mlp[2].in_features == 64  # hidden 128 -> 64
        assert block.attn.qkv.out_features == 192 and block.mlp[2].out_features == 64  # untouched
    reasons = " ".join(g["reason"] for g in info["skipped_groups"])
    assert "on token features" in reasons  # q/k/v are cut into heads: left to method: heads
    assert q(digits_split.test.X[:2]).shape == (2, 10)


def test_transformer_layers_can_be_dropped(digits_split):
    model = trained(digits_split, "transformer", epochs=1, depth=4)
    q, info = pare.compress(model, PruneConfig(method="blocks", target="params", amount=0.25), digits_split)
    assert len(info["dropped_blocks"]) >= 1 and info["params_removed"] >= 0.25


def test_removing_heads_and_neurons_equals_zeroing_them(digits_split):
    model = trained(digits_split, "transformer", epochs=1, depth=2, heads=4)
    x = digits_split.test.X[:8]
    for units, keep in ((attention_heads(model), [0, 2, 3]), (ffn_neurons(model), list(range(0, 128, 2)))):
        layer = units[0]
        zeroed, removed = copy.deepcopy(model), copy.deepcopy(model)
        with torch.no_grad():
            for u in set(range(layer.count(model))) - set(keep):
                for m, dim, idx in layer.slices(zeroed, u):
                    m.weight.narrow(dim, idx.start, idx.stop - idx.start).zero_()
                    if dim == 0:
                        m.bias[idx] = 0
        layer.keep(removed, keep)
        assert layer.count(removed) == len(keep)
        with torch.no_grad():
            assert torch.allclose(removed(x), zeroed(x), atol=1e-5)


def test_prune_heads_and_ffn_shrink_export_and_resume(tmp_path, digits_split):
    model = trained(digits_split, "transformer", epochs=2, depth=2, heads=4)
    heads, info = pare.compress(model, PruneConfig(method="heads", amount=0.5, scope="global"), digits_split)
    kept = [v["after"] for v in info["units"].values()]
    assert sum(kept) == 4 and min(kept) >= 1  # half of 2 x 4 heads, at least one per layer
    both, info2 = pare.compress(heads, PruneConfig(method="ffn", amount=0.5, round_to=8), digits_split)
    assert all(b.mlp[0].out_features == 64 for b in both.blocks)
    assert count_params(both)["params"] < 0.7 * count_params(model)["params"]
    x = digits_split.test.X[:4]
    assert both(x).shape == (4, 10)
    export_onnx(both, x[:1], tmp_path / "p.onnx")
    assert np.allclose(
        onnx_predict(ort_session(tmp_path / "p.onnx"), x.numpy()), both(x).detach().numpy(), atol=1e-4
    )
    from pare.techniques.prune.apply import restore

    save_weights(both, tmp_path / "w.safetensors")
    rebuilt = restore(
        restore(copy.deepcopy(model), PruneConfig(method="heads"), info), PruneConfig(method="ffn"), info2
    )
    rebuilt = pare.export.load_weights_file(rebuilt, tmp_path / "w.safetensors")
    assert torch.equal(rebuilt(x), both(x))


def test_heads_need_a_known_attention_layout(digits_split, resnet):
    with pytest.raises(UnsupportedModelError, match="found no attention module of a layout pare knows"):
        pare.compress(resnet, PruneConfig(method="heads"), digits_split)


def test_unknown_ops_are_skipped_and_reported(digits_split):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = torch.roll(x, 1, dims=1)  # shifts channels: pruning a's channels would scramble b's inputs
            return self.head(self.b(x).mean(dim=(2, 3)))

    q, info = pare.compress(Odd(), PruneConfig(amount=0.5), digits_split)
    reasons = [g["reason"] for g in info["skipped_groups"]]
    assert any("roll" in r for r in reasons)
    assert q.a.out_channels == 8 and q.b.out_channels == 4  # only the safe layer shrank


def test_unreachable_target_says_what_was_reached(digits_split):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # only the output layer: nothing prunable
    q, info = pare.compress(model, PruneConfig(target="macs", amount=0.5), digits_split)
    assert "not reachable" in info["note"] and "reached -0.0%" in info["note"]


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "bn_scale", "entropy", "random"])
def test_every_criterion_prunes_and_fine_tuning_recovers(digits_split, resnet, criterion):
    q, info = pare.compress(
        resnet,
        PruneConfig(amount=0.3, criterion=criterion, finetune_epochs=2),
        digits_split,
        train=TrainConfig(epochs=2, patience=None),
    )
    assert info["params_removed"] > 0.2
    acc = pare.evaluate(q, digits_split.val, bootstrap=0).metrics["accuracy"]
    assert acc > 0.8, criterion


def test_batchnorm_recalibration_repairs_one_shot_pruning(digits_split, resnet):
    cut = {}
    for recalibrate in (False, True):
        q, _ = pare.compress(
            resnet, PruneConfig(target="macs", amount=0.6, recalibrate_bn=recalibrate), digits_split
        )
        cut[recalibrate] = pare.evaluate(q, digits_split.val, bootstrap=0).metrics["accuracy"]
    assert cut[True] > cut[False] + 0.05


def test_iterative_unstructured_keeps_zeros_through_fine_tuning(digits_split, resnet):
    q, info = pare.compress(
        resnet,
        PruneConfig(method="unstructured", amount=0.6, steps=3, finetune_epochs=1),
        digits_split,
        train=TrainConfig(epochs=1, patience=None),
    )
    assert info["selected_weights_zero"] == pytest.approx(0.6, abs=0.01)


def test_n_m_pattern(digits_split):
    model = trained(digits_split, "mlp", epochs=1)
    q, info = pare.compress(model, PruneConfig(method="n_m", n=2, m=4), digits_split)
    w = q.net[1].weight.detach().reshape(q.net[1].weight.shape[0], -1, 4)
    assert torch.all((w != 0).sum(2) <= 2)


def test_group_lasso_sparsity_training_adds_a_penalty(digits_split, resnet):
    q, info = pare.compress(
        resnet,
        PruneConfig(amount=0.3, regularization="group_lasso", reg_epochs=1, reg_strength=1e-3),
        digits_split,
    )
    assert info["regularization_history"]["epochs"][0]["group_lasso_penalty"] > 0


def test_input_model_untouched(digits_split, resnet):
    before = copy.deepcopy(resnet.state_dict())
    pare.compress(resnet, PruneConfig(amount=0.5), digits_split)
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())


@pytest.mark.parametrize(
    "stage,message",
    [
        ({"method": "unstructured", "criterion": "bn_scale"}, "criterion: 'bn_scale' scores channels"),
        ({"method": "unstructured", "target": "macs"}, "target: 'macs' needs method: structured"),
        ({"method": "n_m", "n": 4, "m": 4}, "n: 4 must be smaller than m"),
        ({"amount": 1.5}, "amount: 1.5 must be < 1"),
        ({"regularization": "l1"}, "reg_epochs: regularization 'l1' needs reg_epochs >= 1"),
        ({"criterion": "cosine"}, "criterion: 'cosine' scores whole blocks; use method: blocks"),
        (
            {"method": "heads", "target": "macs"},
            "method 'heads' removes a share of the heads; use target: sparsity",
        ),
        ({"method": "ffn", "criterion": "entropy"}, "criterion: 'entropy' does not score ffn"),
    ],
)
def test_config_errors(stage, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"stages": [{"technique": "prune", **stage}]})


def test_recipe_with_prune_stages_runs_and_resumes(tmp_path, fast_recipe):
    stages = [
        {"technique": "prune", "name": "half", "target": "macs", "amount": 0.5, "finetune_epochs": 1},
        {"technique": "prune", "name": "sparse", "from": "baseline", "method": "unstructured", "amount": 0.8},
    ]
    recipe = fast_recipe(model={"name": "cnn", "args": {"width": 16}}, stages=stages)
    first = pare.run(recipe, tmp_path, report=False)
    half, sparse = first["stages"][1:]
    assert half["comparison"]["flops_ratio"] == pytest.approx(2.0, rel=0.05)
    assert half["comparison"]["size_ratio"] > 1.6
    assert sparse["artifact"].endswith("model.sparse.safetensors") and sparse["comparison"]["size_ratio"] > 2
    again = pare.run(recipe, tmp_path, resume=True, report=False)
    assert [s["seconds"] for s in again["stages"]] == [s["seconds"] for s in first["stages"]]


def test_random_criterion_is_the_same_in_every_process():
    """The random control draws its scores layer by layer in a fixed order, not in the order of a
    set of names (which changes with PYTHONHASHSEED from process to process)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from types import SimpleNamespace\n"
        "from pare.models.zoo import ZOO\n"
        "from pare.techniques.prune import PruneConfig\n"
        "from pare.techniques.prune.apply import _group_scores, _safe_groups\n"
        "model = ZOO['resnet']((1, 8, 8), 10, width=8, depth=2, stages=3).eval()\n"
        "names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}\n"
        "groups, _ = _safe_groups(model, names, torch.zeros(1, 1, 8, 8))\n"
        "torch.manual_seed(0)\n"
        "scores = _group_scores(model, PruneConfig(criterion='random'), None, groups)\n"
        "print(sorted((str(k), round(v, 6)) for k, v in scores.items()))\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(outs) == 1
