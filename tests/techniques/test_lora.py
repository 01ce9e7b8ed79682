"""LoRA and QLoRA: adapters start at zero, merge equals unmerged, only adapters train, the
adapter file is small, and bad targets or ranks are named."""

import copy

import pytest
import torch
import torch.nn as nn

import pare
from pare.errors import ConfigError
from pare.recipes.schema import TrainConfig
from pare.techniques.lora.apply import wrap
from pare.techniques.lora.config import LoRAConfig
from pare.techniques.lora.layers import LoRALinear, QuantBase, merge_adapters
from pare.techniques.quantize.config import QuantizeConfig
from tests.helpers import accuracy, trained


@pytest.fixture(scope="module")
def mlp(digits_split):
    return trained(digits_split, "mlp", epochs=1, width=64, depth=2)  # deliberately undertrained


def test_adapter_starts_at_the_base_and_merge_equals_unmerged():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    layer = LoRALinear(copy.deepcopy(base), rank=3, alpha=6)
    assert torch.equal(layer(x), base(x))  # B = 0: training starts from the base model
    nn.init.normal_(layer.lora_B)
    with torch.no_grad():
        unmerged = layer(x)
        expected = base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T  # alpha / rank = 2
        assert torch.allclose(unmerged, expected, atol=1e-5)
        layer.merge()
        assert torch.allclose(layer(x), unmerged, atol=1e-5)
        layer.unmerge()
        assert torch.allclose(layer.base.weight, base.weight, atol=1e-6)
        model = nn.Sequential(layer)
        plain = merge_adapters(model)
        assert type(plain[0]) is nn.Linear and torch.allclose(plain(x), unmerged, atol=1e-5)


def test_quantized_base_is_close_and_small():
    torch.manual_seed(0)
    base = nn.Linear(128, 32)
    for bits, tol in ((8, 0.01), (4, 0.15)):
        q = QuantBase.rtn(base, bits, group_size=64)
        rel = (q.weight - base.weight).norm() / base.weight.norm()
        assert rel < tol
        assert q.storage_bytes() == 128 * 32 * bits // 8 + (128 // 64) * 32 * 2


@pytest.mark.parametrize("base_bits", [None, 4])
def test_only_adapters_train_and_improve_the_model(mlp, digits_split, base_bits, tmp_path):
    before = accuracy(mlp, digits_split.val)
    config = LoRAConfig(rank=4, finetune_epochs=6, finetune_lr=3e-3, merge=False, base_bits=base_bits)
    tuned, info = pare.compress(mlp, config, digits_split, train=TrainConfig(patience=None), out_dir=tmp_path)
    wrapped = [m for m in tuned.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 3
    if base_bits is None:  # the frozen base is bit-for-bit the input model's
        for m, name in zip(wrapped, ("net.1", "net.4", "net.7")):
            assert torch.equal(m.base.weight, mlp.get_submodule(name).weight)
    total = sum(p.numel() for p in mlp.parameters())
    adapters = sum(4 * (m.in_features + m.out_features) for m in wrapped)
    assert info["adapter_params"] == info["trainable_params"] == adapters
    assert info["trainable_share"] == pytest.approx(adapters / total)
    assert info["adapter_bytes"] < 4 * total / 5  # the adapter file alone is far smaller than the model
    assert {f.name for f in (tmp_path / "adapter").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert accuracy(tuned, digits_split.val) > before + 0.02


def test_qlora_over_a_gptq_stage_trains_over_its_codes(mlp, digits_split):
    """After a GPTQ stage the adapters sit on the codes GPTQ chose, not on a re-quantized copy:
    with B = 0 the wrapped model is the quantized one exactly, and the merged model after
    training differs from it only by the adapters' update."""
    gptq = QuantizeConfig(
        mode="weight_only",
        method="gptq",
        bits=4,
        granularity="per_group",
        group_size=16,
        calibration_samples=64,
    )
    quantized, _ = pare.compress(mlp, gptq, digits_split)
    x = torch.as_tensor(digits_split.val.X[:32])
    with torch.no_grad():
        expected = quantized(x)
    wrapped = copy.deepcopy(quantized)
    layers = wrap(wrapped, LoRAConfig(rank=2))
    assert set(layers) == {"net.1", "net.4", "net.7"}  # the QuantLayers, not the float Linears inside
    for name in layers:
        base = wrapped.get_submodule(name).base
        assert isinstance(base, QuantBase) and base.spec.bits == 4
        assert torch.equal(base.weight, quantized.get_submodule(name).weight_q)  # GPTQ's codes, decoded
        assert base.storage_bytes() < quantized.get_submodule(name).base.weight.numel() * 4 / 5
    with torch.no_grad():
        assert torch.equal(wrapped(x), expected)
    config = LoRAConfig(rank=4, finetune_epochs=2, finetune_lr=3e-3, merge=False)
    tuned, info = pare.compress(quantized, config, digits_split, train=TrainConfig(patience=None))
    assert info["base_bits"] == 4 and info["base_bytes_quantized"] > 0
    for name in layers:
        layer = tuned.get_submodule(name)
        assert torch.equal(layer.base.weight, quantized.get_submodule(name).weight_q)  # frozen
        assert layer.lora_B.abs().sum() > 0  # the adapters trained
    with pytest.raises(ConfigError, match="base_bits: 8 differs from the 4 bits layer 'net.1'"):
        pare.compress(quantized, LoRAConfig(base_bits=8), digits_split)


def test_merged_stage_ships_plain_layers(mlp, digits_split):
    tuned, _ = pare.compress(
        mlp, LoRAConfig(rank=2, finetune_epochs=1), digits_split, train=TrainConfig(patience=None)
    )
    assert not any(isinstance(m, LoRALinear) for m in tuned.modules())
    assert sum(p.numel() for p in tuned.parameters()) == sum(p.numel() for p in mlp.parameters())


def test_bad_targets_and_ranks_are_named(mlp, digits_split):
    with pytest.raises(ConfigError, match="matches no layer.*layers: "):
        pare.compress(mlp, LoRAConfig(layers=["encoder.*"]), digits_split)
    with pytest.raises(ConfigError, match="rank: 80 is larger than layer 'net.7' allows \\(10"):
        pare.compress(mlp, LoRAConfig(rank=80, layers=["net.7"]), digits_split)
    with pytest.raises(ConfigError, match="trainable: 'head' matches no module"):
        pare.compress(mlp, LoRAConfig(trainable=["head"]), digits_split)


def test_lora_stage_runs_in_a_recipe_and_resumes(tmp_path):
    recipe = {
        "name": "lora-test",
        "data": {"source": "digits"},
        "model": {"name": "mlp", "args": {"width": 32}},
        "train": {"epochs": 2},
        "evaluate": {"bootstrap": 50, "latency_repeats": 5, "onnx": False},
        "stages": [
            {"technique": "lora", "rank": 2, "finetune_epochs": 2, "merge": False},
            {
                "technique": "lora",
                "name": "fresh",
                "from": "pretrained",
                "layers": ["net.1", "net.4"],
                "trainable": ["net.7"],
                "finetune_epochs": 2,
            },
        ],
    }
    first = pare.run(recipe, tmp_path)
    info = first["stages"][1]["info"]
    assert 0 < info["trainable_share"] < 0.2
    fresh = first["stages"][2]
    assert fresh["from"] == "pretrained"  # from the untrained model, not the trained baseline
    again = pare.run(recipe, tmp_path, resume=True)
    assert again["stages"][1]["metrics"]["accuracy"] == first["stages"][1]["metrics"]["accuracy"]
