import numpy as np
import pytest
import torch
import torch.nn as nn

from pare.cost import (
    TensorMemoryTracker,
    count_flops,
    count_params,
    peak_inference_memory,
    profile,
    state_bytes,
)
from pare.export import export_onnx, onnx_predict, ort_session, save_weights
from pare.models import build_model
from pare.models.config import ModelConfig


def test_params_and_nonzeros():
    model = nn.Linear(10, 4)
    with torch.no_grad():
        model.weight[:2] = 0
    assert count_params(model) == {"params": 44, "nonzero_params": 24}


def test_flops_of_linear_and_conv():
    assert count_flops(nn.Linear(10, 4), torch.randn(1, 10)) == 2 * 10 * 4
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 3, 5, 5)) == 2 * 3 * 8 * 9 * 25


def test_transformer_attention_flops_are_counted():
    model = build_model(
        ModelConfig(name="transformer", args={"dim": 16, "depth": 1, "heads": 2, "patch_size": 2}),
        (1, 8, 8),
        10,
    )
    tokens, dim = 16, 16
    # q @ k^T and att @ v: 2 * T * T * dim FLOPs each, on top of the linear layers
    linear = 2 * tokens * (dim * 3 * dim + dim * dim + 2 * dim * 2 * dim) + 2 * dim * 10
    patch = 2 * tokens * dim * 4
    assert count_flops(model, torch.randn(1, 1, 8, 8)) == linear + patch + 2 * (2 * tokens * tokens * dim)


def test_memory_tracker_follows_live_tensors():
    with torch.no_grad(), TensorMemoryTracker() as t:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB live
        del a
        c = b + 1  # 8 MB live: b and c
        del b, c
    assert t.peak == 8_000_000 and t.live == 0


def test_peak_inference_memory_counts_weights_and_activations():
    model = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10)).eval()
    weights = state_bytes(model)
    assert weights == 4 * (100 * 1000 + 1000 + 1000 * 10 + 10)
    peak = peak_inference_memory(model, torch.randn(50, 100))
    # at most the input copy-free: two 50x1000 activations live at once (linear output, relu output)
    assert weights + 4 * 50 * 1000 <= peak <= weights + 2 * 4 * 50 * 1000 + 4 * 50 * 10


def test_profile_reports_latency_at_two_batches():
    model = build_model(ModelConfig(name="cnn", args={"width": 8}), (1, 8, 8), 10)
    cost = profile(model, torch.randn(1, 1, 8, 8), batch_size=16, repeats=5)
    table = cost["latency"]["torch"]
    assert set(table) == {"batch_1", "batch_16"}
    for row in table.values():
        assert 0 < row["p50"] <= row["p95"]
    assert cost["latency_ms_p50"] == table["batch_1"]["p50"]
    assert cost["throughput_per_s"] == pytest.approx(16 * 1000 / table["batch_16"]["p50"])
    assert cost["threads"] == torch.get_num_threads() and cost["runtime"] == "torch"


def test_saved_weights_are_real_bytes(tmp_path):
    model = nn.Linear(100, 100)
    size = save_weights(model, tmp_path / "m.safetensors")
    assert size == (tmp_path / "m.safetensors").stat().st_size
    assert 4 * 10100 <= size < 4 * 10100 + 1024  # float32 weights plus a small header


@pytest.mark.parametrize("name", ["cnn", "resnet", "transformer", "mlp"])
def test_onnx_export_matches_torch_with_dynamic_batch(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), (1, 8, 8), 10).eval()
    export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(7, 1, 8, 8)
    got = onnx_predict(ort_session(tmp_path / "m.onnx"), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
