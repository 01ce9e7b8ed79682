"""EfficientNet-Lite0 with its real ImageNet weights: rebuilt from plain layers without changing a
logit, reachable from a recipe with a new head, and prunable, quantizable and exportable."""

import copy

import numpy as np
import pytest
import torch

import pare
from pare.data.photos import photo_batch, views
from pare.errors import UnsupportedModelError
from pare.evaluate import predict_proba, softmax
from pare.graph.surgery import channel_groups, verify
from pare.graph.tracing import trace
from pare.metrics import fidelity
from pare.models import check_model_config
from pare.models.config import ModelConfig
from pare.models.efficientnet import _package_model, weights_path

EGYPTIAN_CAT, TABBY, ESPRESSO = 285, 281, 967


@pytest.fixture(scope="module")
def photos():
    X, sources = photo_batch(224, names=["chelsea", "coffee", "astronaut"])
    return torch.from_numpy(X), sources


@pytest.fixture(scope="module")
def imagenet():
    return pare.build_model(ModelConfig(name="efficientnet_lite0"), (3, 224, 224), 1000).eval()


def test_the_rebuilt_network_is_the_package_network(imagenet, photos):
    X, sources = photos
    package = _package_model((224, 224), pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(imagenet(X), package(X), atol=1e-4)
    assert sum(p.numel() for p in imagenet.parameters()) == 4_652_008


def test_imagenet_weights_recognise_real_photographs(imagenet, photos):
    X, sources = photos
    top = predict_proba(imagenet, X).argmax(1)
    cat = np.array(sources) == "chelsea"
    coffee = np.array(sources) == "coffee"
    assert np.isin(top[cat], [EGYPTIAN_CAT, TABBY]).all()  # scikit-image's cat, every crop and flip
    assert (top[coffee] == ESPRESSO).all()


def test_a_new_task_gets_a_new_head_on_the_pretrained_body(imagenet):
    torch.manual_seed(0)
    model = pare.build_model(ModelConfig(name="efficientnet_lite0"), (3, 64, 64), 10)
    assert model.fc.out_features == 10
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.stem[0][1].weight, state["_conv_stem.weight"])  # padded stem: (pad, conv)
    scratch = pare.build_model(
        ModelConfig(name="efficientnet_lite0", args={"pretrained": False}), (3, 64, 64), 10
    )
    assert not torch.equal(scratch.stem[0][1].weight, state["_conv_stem.weight"])


def test_wrong_inputs_and_arguments_are_named():
    with pytest.raises(UnsupportedModelError, match="3-channel images.*data.channels: 3"):
        pare.build_model(ModelConfig(name="efficientnet_lite0"), (1, 64, 64), 10)
    with pytest.raises(UnsupportedModelError, match=r"too small.*data.image_size"):
        pare.build_model(ModelConfig(name="efficientnet_lite0"), (3, 16, 16), 10)
    problems = check_model_config(ModelConfig(name="efficientnet_lite0", args={"pretrained": "yes"}))
    assert problems == ["model.args.pretrained: expected true or false, got 'yes'"]


def test_photographs_are_deterministic_crops_and_flips():
    X, sources = photo_batch(64)
    again, _ = photo_batch(64)
    assert X.shape == (len(sources), 3, 64, 64) and np.array_equal(X, again)
    assert len(set(sources)) >= 9  # scikit-image's, scikit-learn's and matplotlib's
    one = views(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3), 16)
    assert len(one) == 12 and np.array_equal(one[1], one[0][:, ::-1])
    with pytest.raises(pare.errors.DataError, match="no sample photograph named"):
        photo_batch(64, names=["nope"])


def test_fidelity_counts_agreement_and_divergence():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    assert fidelity(ref, ref) == {"top1_agreement": 1.0, "top5_agreement": 1.0, "kl_divergence": 0.0}
    swapped = ref[:, [1, 0, 2]]
    out = fidelity(swapped, ref)
    assert out["top1_agreement"] == 0.0 and out["top5_agreement"] == 1.0  # 3 classes: all in the top 5
    expected = np.mean([(r * np.log(r / s)).sum() for r, s in zip(ref, swapped)])
    assert out["kl_divergence"] == pytest.approx(expected)


def test_every_channel_group_prunes_exactly():
    torch.manual_seed(0)
    model = pare.build_model(ModelConfig(name="efficientnet_lite0"), (3, 64, 64), 10).eval()
    x = torch.randn(2, 3, 64, 64)
    _, graph = trace(model, x)
    groups = channel_groups(graph)
    assert {g.unsafe for g in groups} <= {None, "reaches the model output"}
    assert not verify(model, [g for g in groups if g.unsafe is None], x)


@pytest.mark.slow
def test_int8_static_follows_fp32_on_photographs_and_runs_int8_in_onnx_runtime(imagenet, photos, tmp_path):
    """ReLU6 folds into the activation quantizer, so ONNX Runtime fuses every convolution into
    int8 (a Clip left between a Conv and its QuantizeLinear keeps the Conv in float)."""
    import onnx

    from pare.data import Part, Split
    from pare.export import onnx_predict, ort_session
    from pare.techniques.quantize import QuantizeConfig
    from pare.techniques.quantize.apply import export

    calib, _ = photo_batch(224, names=["rocket", "china", "flower", "grace_hopper"])
    calib = torch.from_numpy(calib)
    X, _ = photos
    none = torch.zeros(len(calib), dtype=torch.long)
    split = Split(
        Part(calib, none),
        Part(calib[:2], none[:2]),
        Part(X, none[: len(X)]),
        [str(i) for i in range(1000)],
        (3, 224, 224),
        "photos",
    )
    config = QuantizeConfig(mode="static", range_method="percentile", calibration_samples=len(calib))
    q, info = pare.compress(copy.deepcopy(imagenet), config, split)
    shipped = export(q, config, info, tmp_path, X[:1])
    ops = {n.op_type for n in onnx.load(shipped["artifact"]).graph.node}
    assert "Clip" not in ops and "Relu" not in ops
    session = ort_session(shipped["artifact"])
    probs = softmax(onnx_predict(session, X.numpy()))
    agree = fidelity(probs, predict_proba(imagenet, X))
    # measured: KL 0.039, top-5 1.0, top-1 0.75 (the cat's crops sit between two cat classes);
    # with the Clip left in the graph, KL was 0.9 on the photographs at 96 px
    assert agree["kl_divergence"] <= 0.1 and agree["top5_agreement"] >= 0.95, agree
    assert agree["top1_agreement"] >= 0.7, agree
