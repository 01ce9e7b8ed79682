"""The quantize technique on real trained models: modes, ONNX Runtime execution, sizes, errors."""

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import pare
from pare.errors import ConfigError, DataError, UnsupportedModelError
from pare.evaluate import predict_proba
from pare.export import onnx_predict, ort_session
from pare.formats.packed import load_packed
from pare.recipes import recipe_from_dict
from pare.recipes.schema import TrainConfig
from pare.techniques.quantize import QuantizeConfig
from pare.techniques.quantize.apply import export, restore
from pare.techniques.quantize.config import MixedPrecisionConfig
from tests.helpers import accuracy, trained


@pytest.fixture(scope="module")
def cnn(digits_split):
    return trained(digits_split, "cnn", epochs=12, width=16)


@pytest.fixture(scope="module")
def mlp(digits_split):
    return trained(digits_split, "mlp", epochs=12, width=64, depth=2)


def ort_agreement(path, model, part):
    ort = onnx_predict(ort_session(path), part.X.numpy()).argmax(1)
    return float((ort == predict_proba(model, part.X).argmax(1)).mean()), float(
        (ort == part.y.numpy()).mean()
    )


@pytest.mark.parametrize("range_method", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_static_int8_runs_in_onnxruntime_and_matches_simulation(tmp_path, digits_split, cnn, range_method):
    config = QuantizeConfig(mode="static", range_method=range_method)
    q, info = pare.compress(cnn, config, digits_split)
    assert accuracy(q, digits_split.test) >= accuracy(cnn, digits_split.test) - 0.02
    shipped = export(q, config, info, tmp_path, digits_split.test.X[:1])
    assert shipped["runtime"] == "onnxruntime"
    agree, ort_acc = ort_agreement(shipped["artifact"], q, digits_split.test)
    assert agree >= 0.99
    graph = onnx.load(shipped["artifact"]).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    weights = sum(m.weight.numel() for m in cnn.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert sum(int(np.prod(i.dims)) for i in int8) == weights  # every weight stored as one byte
    assert {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    # ReLUs folded into the quantizers' clamp: none left in the graph
    assert "Relu" not in {n.op_type for n in graph.node}
    assert len(info["activations"]) >= 4


def test_static_int8_file_is_about_a_quarter_of_fp32(tmp_path, digits_split):
    model = trained(digits_split, "resnet", epochs=12, width=16, depth=1)
    config = QuantizeConfig(mode="static")
    q, info = pare.compress(model, config, digits_split)
    shipped = export(q, config, info, tmp_path, digits_split.test.X[:1])
    fp32 = pare.export.export_onnx(model, digits_split.test.X[:1], tmp_path / "fp32.onnx")
    assert shipped["artifact"].stat().st_size < 0.3 * fp32
    agree, _ = ort_agreement(shipped["artifact"], q, digits_split.test)
    assert agree >= 0.99


def test_dynamic_int8_uses_integer_kernels(tmp_path, digits_split, mlp):
    config = QuantizeConfig(mode="dynamic")
    q, info = pare.compress(mlp, config, digits_split)
    shipped = export(q, config, info, tmp_path, digits_split.test.X[:1])
    ops = {n.op_type for n in onnx.load(shipped["artifact"]).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops
    agree, ort_acc = ort_agreement(shipped["artifact"], q, digits_split.test)
    assert agree >= 0.99 and ort_acc >= accuracy(mlp, digits_split.test) - 0.01


@pytest.mark.parametrize(
    "scheme,bits,max_bytes_per_weight",
    [
        ("affine", 4, 0.5),
        ("affine", 2, 0.25),
        ("codebook", 3, 0.375),
        ("pow2", 4, 0.5),
        ("binary", None, 0.125),
        ("ternary", None, 0.25),
        ("fixed_point", 6, 0.75),
        ("fp16", None, 2.0),
    ],
)
def test_weight_only_packed_artifact_is_small_and_reloads(
    tmp_path, digits_split, mlp, scheme, bits, max_bytes_per_weight
):
    config = QuantizeConfig(
        mode="weight_only",
        scheme=scheme,
        bits=bits,
        granularity="per_group" if scheme == "affine" and bits == 4 else "per_channel",
    )
    q, info = pare.compress(mlp, config, digits_split)
    shipped = export(q, config, info, tmp_path, digits_split.test.X[:1])
    assert shipped["runtime"] == "torch"
    weights = sum(m.weight.numel() for m in mlp.modules() if isinstance(m, nn.Linear))
    others = sum(p.numel() * 4 for n, p in mlp.named_parameters() if not n.endswith("weight"))
    size = shipped["artifact"].stat().st_size
    assert size <= weights * max_bytes_per_weight + others + 4096  # header and scales stay small
    # the loader rebuilds a plain model computing exactly what the simulation computed
    plain = load_packed(copy.deepcopy(mlp), shipped["artifact"])
    x = digits_split.test.X
    assert torch.allclose(plain(x), q(x), atol=1e-5)


@pytest.mark.parametrize(
    "method,symmetric,bits",
    [("gptq", True, 3), ("gptq", False, 3), ("gptq", False, 8), ("awq", True, 3), ("awq", False, 3)],
)
def test_calibrated_weight_only_beats_rtn_packs_and_resumes(
    tmp_path, digits_split, mlp, method, symmetric, bits
):
    config = QuantizeConfig(
        mode="weight_only",
        bits=bits,
        symmetric=symmetric,
        granularity="per_group",
        group_size=16,
        method=method,
    )
    q, info = pare.compress(mlp, config, digits_split)
    errors = info["calibrated_error"]
    assert set(errors) == {"net.1", "net.4", "net.7"}
    assert all(e[method] < e["rtn"] for e in errors.values()), errors
    if not symmetric:  # unsigned codes with a zero point per group, all of the range in use
        codes = q.get_submodule("net.1").pinned_codes
        assert codes.dtype == torch.uint8 and int(codes.max()) == 2**bits - 1
    x = digits_split.test.X
    shipped = export(q, config, info, tmp_path, x[:1])  # packed like RTN: same loader
    assert torch.allclose(load_packed(copy.deepcopy(mlp), shipped["artifact"])(x), q(x), atol=1e-5)
    pare.export.save_weights(q, tmp_path / "q.safetensors")  # what --resume reloads
    restored = pare.export.load_weights_file(
        restore(copy.deepcopy(mlp), config, info), tmp_path / "q.safetensors"
    )
    assert torch.equal(restored(x), q(x))


def test_qat_recovers_accuracy_lost_at_two_bits(digits_split, mlp):
    ptq, _ = pare.compress(mlp, QuantizeConfig(mode="weight_only", bits=2), digits_split)
    qat, info = pare.compress(
        mlp,
        QuantizeConfig(mode="qat", bits=2, finetune_epochs=4, finetune_lr=1e-3),
        digits_split,
        train=TrainConfig(epochs=4, patience=None),
    )
    assert len(info["history"].epochs) == 4
    assert accuracy(qat, digits_split.val) > accuracy(ptq, digits_split.val) + 0.02


def test_qat_int8_keeps_onnx_execution(tmp_path, digits_split, cnn):
    config = QuantizeConfig(mode="qat", finetune_epochs=1)
    q, info = pare.compress(cnn, config, digits_split, train=TrainConfig(epochs=1, patience=None))
    shipped = export(q, config, info, tmp_path, digits_split.test.X[:1])
    agree, _ = ort_agreement(shipped["artifact"], q, digits_split.test)
    assert shipped["runtime"] == "onnxruntime" and agree >= 0.99


def test_sensitivity_and_mixed_precision_under_a_size_budget(digits_split, mlp):
    weights = {n: m.weight.numel() for n, m in mlp.named_modules() if isinstance(m, nn.Linear)}
    budget = int(sum(weights.values()) * 3 / 8)  # about 3 bits per weight on average
    config = QuantizeConfig(
        mode="weight_only", mixed=MixedPrecisionConfig(bits=[2, 4, 8], size_budget_bytes=budget)
    )
    q, info = pare.compress(mlp, config, digits_split)
    assert set(info["sensitivity"]) == set(weights)
    assert all(set(v) == {"2", "4", "8"} for v in info["sensitivity"].values())
    assert sum(r["bytes"] for r in info["layers"]) <= budget
    assert len({r["bits"] for r in info["layers"]}) > 1  # really mixed


def test_mixed_precision_under_a_maximum_drop(digits_split, mlp):
    config = QuantizeConfig(mode="weight_only", mixed=MixedPrecisionConfig(bits=[2, 4, 8], max_drop=1.0))
    q, info = pare.compress(mlp, config, digits_split)
    assert 100 * (accuracy(mlp, digits_split.val) - accuracy(q, digits_split.val)) <= 1.0 + 1e-9
    assert sum(r["bytes"] for r in info["layers"]) < sum(r["params"] for r in info["layers"])  # below 8 bits


def test_overrides_keep_a_layer_in_float_and_input_model_untouched(digits_split, mlp):
    before = copy.deepcopy(mlp.state_dict())
    q, info = pare.compress(
        mlp,
        QuantizeConfig(mode="weight_only", bits=4, overrides={"net.1": {"skip": True}, "net.7": {"bits": 8}}),
        digits_split,
    )
    bits = {r["layer"]: r["bits"] for r in info["layers"]}
    assert "net.1" not in bits and bits["net.7"] == 8 and bits["net.4"] == 4
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_unsupported_layers_are_skipped_and_listed(digits_split):
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Conv1d(1, 4, 3, padding=1)
            self.head = nn.Linear(4 * 64, 10)

        def forward(self, x):
            return self.head(self.seq(x.flatten(1).unsqueeze(1)).flatten(1))

    q, info = pare.compress(WithConv1d(), QuantizeConfig(mode="weight_only"), digits_split)
    assert info["skipped_layers"] == [{"layer": "seq", "type": "Conv1d"}]
    assert [r["layer"] for r in info["layers"]] == ["head"]


def test_too_few_calibration_samples_warns(digits_split, cnn):
    with pytest.warns(
        UserWarning, match=r"only 1167 training samples for calibration \(calibration_samples=5000\)"
    ):
        pare.compress(cnn, QuantizeConfig(mode="static", calibration_samples=5000), digits_split)


def test_nan_in_calibration_data_is_refused(digits_split, cnn):
    bad = copy.deepcopy(digits_split)
    bad.train.X[::5, 0, 0, 0] = float("nan")  # some will be drawn for calibration
    with pytest.raises(DataError, match="calibration data contains NaN"):
        pare.compress(cnn, QuantizeConfig(mode="static"), bad)


@pytest.mark.parametrize(
    "stage,message",
    [
        ({"bits": 9, "mode": "weight_only"}, "bits: 9 is out of range for scheme 'affine'"),
        ({"scheme": "codebook"}, "mode: 'static' runs in ONNX Runtime's int8 kernels"),
        ({"range_method": "kl"}, "range_method: 'kl' is not one of"),
        ({"scheme": "binary", "bits": 4, "mode": "weight_only"}, "scheme 'binary' is 1-bit by definition"),
        ({"mode": "weight_only", "mixed": {"bits": [2, 4]}}, "give exactly one of max_drop"),
        ({"overrides": {"net.1": {"bitz": 4}}}, r"unknown option\(s\) \['bitz'\]"),
        ({"mode": "qat", "scheme": "codebook"}, "cannot train through scheme 'codebook'"),
        (
            {"method": "gptq"},
            "method: 'gptq' chooses weight codes from calibration data and needs mode: weight_only",
        ),
    ],
)
def test_config_errors_name_the_key(stage, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"stages": [{"technique": "quantize", **stage}]})


def test_quantizing_twice_in_a_chain_is_explained(digits_split, mlp):
    q, _ = pare.compress(mlp, QuantizeConfig(mode="weight_only"), digits_split)
    with pytest.raises(UnsupportedModelError, match="already quantized by an earlier stage.*from: baseline"):
        pare.compress(q, QuantizeConfig(mode="dynamic"), digits_split)


def test_layer_patterns_that_match_nothing(digits_split, mlp):
    with pytest.raises(ConfigError, match=r"layers: 'net.9' matches no layer .*did you mean 'net.\d'"):
        pare.compress(mlp, QuantizeConfig(layers=["net.9"]), digits_split)
    with pytest.raises(
        ConfigError, match="group_size: 48 does not divide the 64 inputs per channel of layer 'net.1'"
    ):
        pare.compress(
            mlp,
            QuantizeConfig(mode="weight_only", bits=4, granularity="per_group", group_size=48),
            digits_split,
        )


def test_recipe_with_quantize_stages_resumes_from_saved_artifacts(tmp_path, fast_recipe):
    stages = [
        {"technique": "quantize", "name": "int8", "mode": "static"},
        {"technique": "quantize", "name": "int4", "from": "baseline", "mode": "weight_only", "bits": 4},
    ]
    recipe = fast_recipe(
        model={"name": "mlp", "args": {"width": 128, "depth": 1}}, evaluate={"onnx": True}, stages=stages
    )
    first = pare.run(recipe, tmp_path, report=False)
    int8, int4 = first["stages"][1:]
    assert int8["cost"]["runtime"] == "onnxruntime" and int8["artifact"].endswith("model.int8.onnx")
    assert int8["cost"]["onnx_top1_agreement"] >= 0.99  # ONNX Runtime's int8 kernels vs pare's simulation
    assert int8["from"] == "baseline" and int4["from"] == "baseline"
    assert int4["artifact"].endswith("model.packed.safetensors") and int4["comparison"]["size_ratio"] > 4
    # a third stage added later: the quantized stages are rebuilt from their saved files, not re-run
    recipe["stages"] = [
        *stages,
        {"technique": "zero_smallest", "name": "after-int8", "from": "int8", "fraction": 0.1},
    ]
    again = pare.run(recipe, tmp_path, resume=True, report=False)
    assert [s["seconds"] for s in again["stages"][:3]] == [s["seconds"] for s in first["stages"]]
    assert again["stages"][3]["metrics"]["accuracy"] > 0.8


class TokenClassifier(nn.Module):
    """Token ids -> an embedding table, mean over tokens, two Linear layers."""

    def __init__(self, vocab=50, dim=16, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes))

    def forward(self, ids):
        return self.net(self.embed(ids).mean(1))


def test_dynamic_int8_stores_embedding_tables_as_int8_rows(tmp_path):
    torch.manual_seed(0)
    X = torch.randint(0, 50, (120, 6))
    y = (X[:, 0] % 3).long()
    part = pare.data.Part(X, y)
    split = pare.data.Split(part, part, part, ["a", "b", "c"], (6,), "tokens")
    model = TokenClassifier().eval()
    config = QuantizeConfig(mode="dynamic")
    q, info = pare.compress(model, config, split)
    assert info["embeddings"] == ["embed"] and "skipped_layers" not in info
    shipped = export(q, config, info, tmp_path, X[:1])
    graph = onnx.load(str(shipped["artifact"])).graph
    tables = [
        i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and list(i.dims) == [50, 16]
    ]
    assert len(tables) == 1  # the table is stored as int8 rows
    ort = onnx_predict(ort_session(shipped["artifact"]), X.numpy())
    with torch.no_grad():
        assert np.allclose(ort, q(X).numpy(), atol=0.05)  # ONNX Runtime computes what the simulation does
    err = (q.embed.weight - model.embed.weight).abs().max() / model.embed.weight.abs().max()
    assert 0 < err < 0.01


class PositionalTokenClassifier(TokenClassifier):
    """Adds a position table and names its token table the way Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(6, 16)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        return self.net((self.embed(ids) + self.pos.weight[None]).mean(1))


def test_dynamic_int8_keeps_position_tables_float_and_excludes_tables_by_name():
    torch.manual_seed(0)
    X = torch.randint(0, 50, (64, 6))
    part = pare.data.Part(X, (X[:, 0] % 3).long())
    split = pare.data.Split(part, part, part, ["a", "b", "c"], (6,), "tokens")
    model = PositionalTokenClassifier().eval()
    q, info = pare.compress(model, QuantizeConfig(mode="dynamic"), split)
    assert info["embeddings"] == ["embed"] and info["float_tables"] == ["pos"]  # the token table only
    assert torch.equal(q.pos.weight, model.pos.weight)
    assert not torch.equal(q.embed.weight, model.embed.weight)
    q, info = pare.compress(model, QuantizeConfig(mode="dynamic", exclude=["embed"]), split)
    assert info["embeddings"] == [] and torch.equal(q.embed.weight, model.embed.weight)
    with pytest.raises(ConfigError, match="'embedd' matches no layer"):
        pare.compress(model, QuantizeConfig(mode="dynamic", exclude=["embedd"]), split)


def test_gptq_damps_a_singular_hessian_and_names_a_hopeless_one():
    from pare.errors import PareError
    from pare.formats.schemes import WeightSpec, quantize_weight
    from pare.techniques.quantize.calibrated import gptq

    torch.manual_seed(0)
    w = torch.randn(8, 16)
    spec = WeightSpec(bits=4, granularity="per_group", group_size=8)
    x = torch.randn(3, 16)  # 3 samples for 16 inputs: X^T X is singular
    q = gptq(w, x.T @ x, spec)
    assert torch.isfinite(q.dequantized).all() and q.codes.abs().max() <= 7
    rtn = quantize_weight(w, spec).dequantized
    assert (x @ (q.dequantized - w).T).pow(2).sum() < (x @ (rtn - w).T).pow(2).sum()
    with pytest.raises(PareError, match="input Hessian of layer 'fc' is not positive definite"):
        gptq(w, -torch.eye(16) * 100, spec, name="fc")


def test_gptq_with_input_drift_aims_at_the_float_outputs():
    from pare.formats.schemes import WeightSpec
    from pare.techniques.quantize.calibrated import gptq
    from pare.training.blockwise import model_feed
    from pare.training.calibration import InputStats, group_stats

    torch.manual_seed(0)
    x_ref = torch.randn(4096, 32)  # what the layer sees in the float model
    x = x_ref @ (torch.eye(32) + 0.2 * torch.randn(32, 32))  # moved by earlier quantized layers
    w = torch.randn(16, 32)
    stats = InputStats(32)
    for i in range(0, 4096, 1024):  # accumulated batch by batch, as calibration does
        stats.update(x[i : i + 1024], x_ref[i : i + 1024])
    spec = WeightSpec(bits=4, symmetric=False, granularity="per_group", group_size=16)

    def error(q):  # against the float model's output
        return float((x @ q.dequantized.T - x_ref @ w.T).pow(2).mean() / (x_ref @ w.T).pow(2).mean())

    plain, aimed = gptq(w, stats.hessian, spec), gptq(w, stats.hessian, spec, drift=stats.drift)
    assert error(aimed) < 0.15 * error(plain), (error(aimed), error(plain))  # measured 0.097 vs 1.33
    # a float model paired with its copy: no drift, so GPTQ is unchanged
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    feed = model_feed(mlp, ["2"], [torch.randn(32, 8), torch.randn(32, 8)], copy.deepcopy(mlp))
    paired = group_stats(feed, {"2": mlp[2]})["2"]
    assert paired.rows == 64 and paired.drift.abs().max() == 0
    assert InputStats(8).drift is None
