"""Structured pruning on the graphs users bring: every channel group prunes exactly (the pruned
model computes what the original computes with those channels zeroed) or is skipped by name,
and each architecture goes prune -> fine-tune -> int8 -> ONNX Runtime without a traceback."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import pare
from pare.cli import main
from pare.cost import count_flops
from pare.errors import UnsupportedModelError
from pare.evaluate import predict_proba
from pare.export import onnx_predict, ort_session
from pare.graph.surgery import channel_groups, shrink, verify
from pare.graph.tracing import trace
from pare.models.config import ModelConfig
from pare.techniques.prune import PruneConfig
from pare.techniques.quantize import QuantizeConfig
from pare.techniques.quantize.apply import export
from tests.fixtures.gallery import GALLERY

# what each graph makes unsafe, named by the op and module (None: everything but the classes prunes)
SKIPS = {
    "mobilenet_v2": None,
    "efficientnet_mbconv_se": None,
    "densenet_concat": None,
    "weight_reuse": None,
    "resnext_grouped": "grouped.0: grouped convolution (4 groups)",
    "chunk_two_branch": "chunk: chunk splits channels by position",
    "tied_convs": "a: shares a parameter with b",
    "zoo_resnet": None,  # pare's own ResNet: residual additions tie the stem to every block
}


def _model(arch):
    torch.manual_seed(0)
    if arch == "zoo_resnet":
        model = pare.build_model(ModelConfig(name="resnet", args={"width": 16, "depth": 1}), (1, 8, 8), 10)
    else:
        model = GALLERY[arch](10)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so zeroing is not trivially exact
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(SKIPS))
def test_removing_channels_equals_zeroing_them_on_every_graph(digits_split, arch):
    model = _model(arch)
    x = digits_split.test.X[:16]
    _, graph = trace(model, x[:2])
    groups = channel_groups(graph)
    reasons = {g.unsafe for g in groups if g.unsafe} - {"reaches the model output"}
    if SKIPS[arch] is None:
        assert not reasons
    else:
        assert any(r.startswith(SKIPS[arch]) for r in reasons), reasons
    safe = [g for g in groups if g.unsafe is None]
    if arch == "tied_convs":  # the tie holds the stem (which feeds both) too: nothing is safe here
        assert not safe
        return
    assert safe and not verify(model, safe, x[:2])
    removed = safe[::3]
    zeroed, shrunk = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for g in removed:
            for name, k in g.producers + g.followers:
                m = zeroed.get_submodule(name)
                m.weight[k] = 0
                if m.bias is not None:
                    m.bias[k] = 0
    shrink(shrunk, removed)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    assert torch.allclose(shrunk(x), zeroed(x), atol=1e-5)


def test_the_pruned_reused_module_shrinks_on_both_sides(digits_split):
    """The issue's crash: a convolution applied twice has its input and output channels coupled
    with the stem's, so all three shrink together and the model still runs."""
    q, info = pare.compress(_model("weight_reuse"), PruneConfig(target="macs", amount=0.5), digits_split)
    assert q.shared.in_channels == q.shared.out_channels == q.stem.out_channels == q.norm.num_features < 16
    assert q(digits_split.test.X[:3]).shape == (3, 10)


def test_tied_weights_stay_tied(digits_split):
    q, info = pare.compress(_model("tied_convs"), PruneConfig(amount=0.5), digits_split)
    assert q.a.weight is q.b.weight and q.a.out_channels == 16
    assert {"reason": "a: shares a parameter with b", "channels": 32} in info["skipped_groups"]


def test_a_misread_graph_is_caught_by_verification_and_skipped(digits_split):
    """The tracer follows a LayerNorm's channels like a BatchNorm's; over a feature vector it mixes
    them (mean and variance), so removing one is not zeroing it: verification names the layer."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10))
    q, info = pare.compress(model, PruneConfig(amount=0.5), digits_split)
    assert q[1].out_features == 32
    assert any(
        g["reason"].startswith("1: removing a channel is not the same") for g in info["skipped_groups"]
    )


def test_an_untraceable_model_names_the_line_that_broke_tracing(digits_split):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 16)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            h = self.a(x.flatten(1))
            if h.sum() > 0:
                h = h * 2
            return self.head(h)

    with pytest.raises(
        UnsupportedModelError,
        match=r"needs a model torch.fx can trace.*test_prune_gallery.py:\d+ `if h.sum\(\) > 0:`",
    ):
        pare.compress(Branchy(), PruneConfig(amount=0.5), digits_split)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(GALLERY))
def test_prune_finetune_int8_onnx_on_every_graph(tmp_path, digits_split, arch):
    model = _model(arch)
    x = digits_split.test.X[:1]
    pruned, info = pare.compress(
        copy.deepcopy(model), PruneConfig(target="macs", amount=0.4, finetune_epochs=1), digits_split
    )
    kept = count_flops(pruned, x) / count_flops(model, x)
    if arch == "tied_convs":
        assert kept == 1.0 and "not reachable" in info["note"]
    else:
        assert kept <= 0.61 and "note" not in info  # 40 % of the MACs gone, to the nearest channel
    assert len(info["history"].epochs) == 1  # fine-tuned after the cut
    config = QuantizeConfig(mode="static")
    q, qinfo = pare.compress(pruned, config, digits_split)
    shipped = export(q, config, qinfo, tmp_path, x)
    assert shipped["runtime"] == "onnxruntime"
    ort = onnx_predict(ort_session(shipped["artifact"]), digits_split.test.X.numpy()).argmax(1)
    agree = float(np.mean(ort == predict_proba(q, digits_split.test.X).argmax(1)))
    assert agree >= 0.97


def test_validate_warns_about_what_structured_pruning_will_leave_alone(tmp_path, capsys):
    recipe = {
        "name": "grouped",
        "data": {"source": "digits"},
        "model": {"factory": "tests.fixtures.gallery:build", "args": {"arch": "resnext_grouped"}},
        "stages": [{"technique": "prune", "name": "half", "target": "macs", "amount": 0.5}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: stages[0] (half): 16 channels will be left alone: grouped.0: grouped convolution" in out
