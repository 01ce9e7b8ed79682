import pytest
import torch.nn as nn

from pare.errors import ConfigError
from pare.models import build_model
from pare.models.config import ModelConfig
from pare.selection import layer_options, select_layers


@pytest.fixture(scope="module")
def resnet():
    return build_model(ModelConfig(name="resnet", args={"width": 8, "depth": 1, "stages": 2}), (1, 8, 8), 10)


def test_default_selects_every_linear_and_conv(resnet):
    names = list(select_layers(resnet))
    assert names == [
        "stem.0",
        "blocks.0.conv1",
        "blocks.0.conv2",
        "blocks.1.conv1",
        "blocks.1.conv2",
        "blocks.1.shortcut.0",
        "head.2",
    ]


def test_glob_regex_type_and_exclude(resnet):
    assert list(select_layers(resnet, include=["blocks.*.conv1"])) == ["blocks.0.conv1", "blocks.1.conv1"]
    assert list(select_layers(resnet, include=[r"re:blocks\.1\..*"], exclude=["*shortcut*"])) == [
        "blocks.1.conv1",
        "blocks.1.conv2",
    ]
    assert list(select_layers(resnet, types=["Linear"])) == ["head.2"]
    assert list(select_layers(resnet, types=[nn.BatchNorm2d], include=["stem.*"])) == ["stem.1"]


def test_pattern_matching_nothing_lists_the_layers(resnet):
    with pytest.raises(ConfigError) as e:
        select_layers(resnet, include=["blocks.0.conv3"], key="stages[0].layers")
    text = str(e.value)
    assert "stages[0].layers: 'blocks.0.conv3' matches no layer of type Linear/Conv2d" in text
    assert "did you mean 'blocks.0.conv2'?" in text and "layers: stem.0, blocks.0.conv1" in text
    with pytest.raises(ConfigError, match="no layer selected"):
        select_layers(resnet, include=["head.2"], exclude=["head.*"])


def test_per_layer_overrides_apply_in_order():
    overrides = {"blocks.*": {"bits": 4}, "blocks.0.conv1": {"bits": 8, "skip": True}}
    assert layer_options("blocks.0.conv1", {"bits": 2}, overrides) == {"bits": 8, "skip": True}
    assert layer_options("blocks.1.conv1", {"bits": 2}, overrides) == {"bits": 4}
    assert layer_options("head", {"bits": 2}, None) == {"bits": 2}
