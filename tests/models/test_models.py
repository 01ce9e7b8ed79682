import pytest
import torch
from safetensors.torch import save_file

from pare.errors import UnsupportedModelError
from pare.models import ZOO, build_model
from pare.models.config import ModelConfig

IMAGE, VECTOR = (1, 8, 8), (30,)


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"gpt", "efficientnet_lite0"}))  # test_efficientnet.py
def test_zoo_models_map_images_to_logits(name):
    model = build_model(ModelConfig(name=name), IMAGE, 10)
    assert model(torch.randn(3, *IMAGE)).shape == (3, 10)


def test_gpt_is_causal_and_refuses_images():
    torch.manual_seed(0)
    gpt = build_model(
        ModelConfig(name="gpt", args={"dim": 32, "depth": 2}), (16,), 100, kind="language_model"
    ).eval()
    ids = torch.randint(0, 100, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 100
    with torch.no_grad():
        a, b = gpt(ids), gpt(changed)
    assert a.shape == (2, 16, 100)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # no token sees the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    with pytest.raises(UnsupportedModelError, match="gpt: takes token ids"):
        build_model(ModelConfig(name="gpt"), IMAGE, 10)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_tabular_models(name):
    model = build_model(ModelConfig(name=name), VECTOR, 2)
    assert model(torch.randn(4, *VECTOR)).shape == (4, 2)


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_image_models_refuse_tabular_data(name):
    with pytest.raises(
        UnsupportedModelError, match=f"model '{name}' needs images .* use 'mlp' or 'transformer'"
    ):
        build_model(ModelConfig(name=name), VECTOR, 2)


def test_width_and_depth_change_size():
    small = build_model(ModelConfig(name="resnet", args={"width": 8, "depth": 1}), IMAGE, 10)
    big = build_model(ModelConfig(name="resnet", args={"width": 16, "depth": 2}), IMAGE, 10)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 4 * count(small)


def test_transformer_patch_must_divide_image():
    with pytest.raises(UnsupportedModelError, match="not divisible by patch_size=3"):
        build_model(ModelConfig(name="transformer", args={"patch_size": 3}), IMAGE, 10)


def test_factory_with_kwargs_and_weights(tmp_path):
    cfg = ModelConfig(factory="tests.fixtures.user_models:two_branch", args={"hidden": 8})
    model = build_model(cfg, IMAGE, 10)
    x = torch.randn(2, *IMAGE)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    for weights in ("w.safetensors", "w.pt"):
        cfg.weights = str(tmp_path / weights)
        loaded = build_model(cfg, IMAGE, 10)
        assert torch.allclose(loaded(x), model(x))


def test_weights_that_do_not_fit(tmp_path):
    other = build_model(ModelConfig(name="mlp"), IMAGE, 10)
    save_file(other.state_dict(), tmp_path / "w.safetensors")
    cfg = ModelConfig(name="cnn", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(UnsupportedModelError, match="weights do not fit the model: missing"):
        build_model(cfg, IMAGE, 10)
    cfg.weights = str(tmp_path / "none.pt")
    with pytest.raises(UnsupportedModelError, match="none.pt' does not exist"):
        build_model(cfg, IMAGE, 10)


def test_torch_checkpoint_with_code_is_refused(tmp_path):
    # weights_only=True: a pickled object that is not plain tensors must not load (or run code)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": ModelConfig()}, tmp_path / "unsafe.pt")
    cfg = ModelConfig(name="mlp", weights=str(tmp_path / "unsafe.pt"))
    with pytest.raises(UnsupportedModelError, match="cannot read weights"):
        build_model(cfg, IMAGE, 10)


@pytest.mark.parametrize(
    "factory,message",
    [
        (
            "tests.fixtures.user_models:wrong_output",
            r"returns \(2, 11\) for a batch of 2; expected logits of shape \(2, 10\)",
        ),
        ("tests.fixtures.user_models:not_a_module", "returned str, not a torch.nn.Module"),
        (
            "tests.fixtures.user_models:two_brnch",
            r"has no callable 'two_brnch' \(did you mean 'two_branch'\?\)",
        ),
    ],
)
def test_factory_errors(factory, message):
    with pytest.raises(UnsupportedModelError, match=message):
        build_model(ModelConfig(factory=factory), IMAGE, 10)
