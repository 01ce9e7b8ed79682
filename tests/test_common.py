"""Common tests: every registered technique, on one tiny trained CNN, meets the same contract.

Output finite; the shipped artifact and the FLOPs not larger than the input's; ``restore``
rebuilds a structure that loads the saved weights and computes the same outputs; the config
survives ``to_dict``/``from_dict``; the input model is untouched. A technique registered without
an entry in CONFIGS fails here until it is given one.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pare.config import from_dict, to_dict
from pare.cost import count_flops
from pare.errors import ConfigError
from pare.export import export_onnx, load_weights_file, save_weights
from pare.recipes.pipeline import Built, Step, ship
from pare.registry import techniques
from tests.helpers import trained

# one small, fast configuration per technique (options that keep each run to seconds)
CONFIGS = {
    "prune": {"amount": 0.5},
    "quantize": {"mode": "static", "calibration_samples": 64},
    "distill": {"student": {"shrink": 0.5}, "epochs": 1},
    "lowrank": {"rank_by": "ratio", "ratio": 0.5},
    "share": {"clusters": 16},
    "lora": {"rank": 2, "finetune_epochs": 1},
    "zero_smallest": {"fraction": 0.3},
    "ship_onnx": {},
}


@pytest.fixture(scope="module")
def cnn(digits_split):
    return trained(digits_split, "cnn", epochs=2, width=8)


def test_every_registered_technique_has_a_case():
    assert set(techniques()) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_technique_contract(name, cnn, digits_split, tmp_path):
    import pare

    technique = techniques()[name]
    config = from_dict(technique.config_cls, CONFIGS[name])
    assert from_dict(technique.config_cls, to_dict(config)) == config  # the recipe form round-trips
    before = copy.deepcopy(cnn.state_dict())
    model, info = pare.compress(cnn, config, digits_split, out_dir=tmp_path / "work")
    model.eval()
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in before.items())  # input untouched
    x = digits_split.test.X[:16]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (16, 10) and torch.isfinite(out).all()
    example = x[:1]
    assert count_flops(model, example) <= count_flops(cnn, example)
    folder = tmp_path / "shipped"
    folder.mkdir()
    artifact = ship(Built(Step(name, name, config), model, info, None), folder, example)
    if artifact.runtime == "onnxruntime":  # against the input model in the same format
        base_bytes = export_onnx(cnn, example, tmp_path / "input.onnx")
    else:
        base_bytes = save_weights(cnn, tmp_path / "input.safetensors")
    assert artifact.bytes <= base_bytes * 1.01  # metadata may differ by a few bytes
    rebuilt = copy.deepcopy(cnn)
    if technique.restore is not None:
        rebuilt = technique.restore(rebuilt, config, info)
    rebuilt = load_weights_file(rebuilt, artifact.weights)  # what --resume does
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), out, atol=1e-5)


def test_configs_are_frozen_and_checked_when_built_in_python():
    from pare.techniques.lora.config import LoRAConfig
    from pare.techniques.quantize import QuantizeConfig

    with pytest.raises(ConfigError, match="mode: 'static' runs in ONNX Runtime's int8 kernels"):
        QuantizeConfig(mode="static", bits=4)
    with pytest.raises(ConfigError, match="rank: 0 must be >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="mode: 'fast' is not one of"):
        QuantizeConfig(mode="fast")
    config = QuantizeConfig(mode="dynamic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 4
    assert dataclasses.replace(config, calibration_samples=8).calibration_samples == 8


def test_renamed_keys_are_refused_by_name():
    from pare.techniques.lora.config import LoRAConfig
    from pare.techniques.quantize import QuantizeConfig

    with pytest.raises(ConfigError, match="target: renamed to 'layers'; write layers: instead"):
        from_dict(LoRAConfig, {"target": ["fc"]})
    with pytest.raises(ConfigError, match="qat_epochs: renamed to 'finetune_epochs'"):
        from_dict(QuantizeConfig, {"mode": "qat", "qat_epochs": 2})


def test_merge_refuses_weights_that_are_not_finite():
    from pare.errors import PareError
    from pare.graph.merge import merge_modules
    from pare.techniques.lowrank.factorize import factorize

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model[2] = factorize(model[2], "svd", [2])
    with torch.no_grad():
        model[2][0].weight[0, 0] = float("nan")
    with pytest.raises(
        PareError, match="layer '2': merging its Factorized gives a weight that is not finite"
    ):
        merge_modules(model, type(model[2]))
