"""Quantization benchmark: pare's schemes against fp32 and against ONNX Runtime's own quantizer.

For each model trained on digits (the zoo CNN and ResNet on 8x8 images, and a compute-bound
ResNet of width 64 on digits upsampled to 32x32), in one process: fp32, pare int8 static with
each range method, int8 dynamic, int4 weight-only, int4 QAT, mixed precision, and ONNX
Runtime's quantize_static / quantize_dynamic on the same exported model and the same
calibration samples. Accuracy on the test split (bootstrap 95 % CI), artifact bytes, and
latency in ONNX Runtime at batch 1 and 64 (torch for artifacts that run in torch).

    python benchmarks/quantization.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as bench  # noqa: E402
import _onnxruntime_peers as ort_peers  # noqa: E402

import pare  # noqa: E402
from pare.cost import latency_table  # noqa: E402
from pare.cost.profile import batch_of  # noqa: E402
from pare.evaluate import predict_proba, softmax  # noqa: E402
from pare.export import export_onnx, onnx_latency, onnx_predict, ort_session  # noqa: E402
from pare.models.config import ModelConfig  # noqa: E402
from pare.recipes.context import StageContext  # noqa: E402
from pare.recipes.schema import DataConfig, TrainConfig  # noqa: E402
from pare.techniques.quantize import MixedPrecisionConfig, QuantizeConfig  # noqa: E402
from pare.techniques.quantize.apply import export  # noqa: E402
from pare.training.calibration import calibration_batches  # noqa: E402

MODELS = {
    "cnn": {"zoo": "cnn", "args": {"width": 32, "depth": 2}, "image_size": None, "epochs": 20},
    "resnet": {
        "zoo": "resnet",
        "args": {"width": 16, "depth": 2, "stages": 3},
        "image_size": None,
        "epochs": 20,
    },
    "resnet64-32px": {
        "zoo": "resnet",
        "args": {"width": 64, "depth": 1, "stages": 2},
        "image_size": [32, 32],
        "epochs": 8,
        "compute_bound": True,
    },
}
RANGES = ["minmax", "moving_average", "percentile", "mse", "entropy"]
DEFAULT_STATIC = "int8-static-" + QuantizeConfig().range_method  # what `mode: static` does without options
BATCHES = (1, 64)


def variants(quick: bool) -> list[tuple[str, QuantizeConfig]]:
    out = [(f"int8-static-{r}", QuantizeConfig(mode="static", range_method=r)) for r in RANGES]
    out += [
        ("int8-dynamic", QuantizeConfig(mode="dynamic")),
        ("int4-weight-only", QuantizeConfig(mode="weight_only", bits=4)),
        ("int4-qat", QuantizeConfig(mode="qat", bits=4, finetune_epochs=1 if quick else 3, finetune_lr=5e-4)),
        (
            "mixed-2-4-8",
            QuantizeConfig(mode="weight_only", mixed=MixedPrecisionConfig(bits=[2, 4, 8], max_drop=0.5)),
        ),
    ]
    return out


def ort_measure(path, split, repeats):
    session = ort_session(path)
    proba = softmax(onnx_predict(session, split.test.X.numpy()))
    lat = onnx_latency(session, split.test.X, BATCHES, repeats)
    return proba, {f"batch_{b}": lat[f"batch_{b}"]["p50"] for b in BATCHES}


def torch_measure(model, split, repeats):
    def run(x):
        with torch.inference_mode():
            model(x)

    lat = latency_table(run, split.test.X, BATCHES, repeats)
    return predict_proba(model, split.test.X), {f"batch_{b}": lat[f"batch_{b}"]["p50"] for b in BATCHES}


def peers(fp32_path: Path, calib: list[torch.Tensor], work: Path) -> dict[str, Path]:
    """ONNX Runtime's own quantizers on the same fp32 graph and calibration samples."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = ort_peers.preprocessed(fp32_path, work / "peer-pre.onnx")
    static = ort_peers.quantize_static(pre, calib, work / "peer-static.onnx")
    dynamic = work / "peer-dynamic.onnx"
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QInt8)
    return {"ort-quantize_static": static, "ort-quantize_dynamic": dynamic}


def run_model(key: str, spec: dict, quick: bool, work: Path) -> list[dict]:
    repeats, n_boot = (5, 200) if quick else (30, 1000)
    data = DataConfig(source="digits", image_size=spec["image_size"])
    split = pare.make_splits(data, seed=0)[0]
    torch.manual_seed(0)
    model = pare.build_model(
        ModelConfig(name=spec["zoo"], args=spec["args"]), split.input_shape, split.num_classes
    )
    epochs = max(2, spec["epochs"] // 4) if quick else spec["epochs"]
    train = TrainConfig(epochs=epochs, lr=0.003, patience=None)
    start = time.perf_counter()
    pare.fit(model, split.train, split.val, train, description=f"train {key}")
    model.eval()
    y = split.test.y.numpy()
    example = split.test.X[:1]
    fp32_path = work / f"{key}-fp32.onnx"
    export_onnx(model, example, fp32_path)
    base_bytes = fp32_path.stat().st_size
    proba, base_ort = ort_measure(fp32_path, split, repeats)
    _, base_torch = torch_measure(model, split, repeats)
    fp32 = ort_peers.accuracy_with_ci(y, proba, n_boot)
    elapsed = time.perf_counter() - start
    rows = [
        bench.row(
            "fp32",
            key,
            "pare",
            fp32,
            base_bytes,
            base_bytes,
            "onnxruntime",
            base_ort,
            base_ort,
            elapsed,
            torch_latency_ms_by_batch=base_torch,
        )
    ]
    base_lat = {"onnxruntime": base_ort, "torch": base_torch}
    ctx = StageContext(
        split=split,
        baseline=model,
        train_config=dataclasses.replace(train, epochs=1),
        seed=0,
        out_dir=work,
        name=key,
    )
    for name, config in variants(quick):
        t0 = time.perf_counter()
        if quick:
            config = dataclasses.replace(config, calibration_samples=256)
        q, info = pare.compress(model, config, split, train=ctx.train_config)
        stage_dir = work / f"{key}-{name}"
        stage_dir.mkdir(exist_ok=True)
        shipped = export(q, config, info, stage_dir, example)
        if shipped["runtime"] == "onnxruntime":
            proba, lat = ort_measure(shipped["artifact"], split, repeats)
            sim = predict_proba(q, split.test.X).argmax(1)
            extra = {"ort_vs_simulation_top1": float((proba.argmax(1) == sim).mean())}
        else:
            proba, lat = torch_measure(q, split, repeats)
            extra = {}
        runtime = shipped["runtime"]
        rows.append(
            _row(
                name,
                key,
                "pare",
                y,
                proba,
                n_boot,
                shipped["artifact"],
                base_bytes,
                runtime,
                lat,
                base_lat,
                time.perf_counter() - t0,
                bits={r["layer"]: r["bits"] for r in info["layers"]},
                **extra,
            )
        )
    calib = calibration_batches(ctx, QuantizeConfig(calibration_samples=256 if quick else 512))
    peer_dir = work / f"{key}-peers"
    peer_dir.mkdir()
    peer_paths = peers(fp32_path, calib, peer_dir)
    for name, path in peer_paths.items():
        t0 = time.perf_counter()
        proba, lat = ort_measure(path, split, repeats)
        rows.append(
            _row(
                name,
                key,
                "onnxruntime",
                y,
                proba,
                n_boot,
                path,
                base_bytes,
                "onnxruntime",
                lat,
                base_lat,
                time.perf_counter() - t0,
            )
        )
    ours = work / f"{key}-{DEFAULT_STATIC}" / "model.int8.onnx"
    for b in BATCHES:  # pare against the peer, timed alternately: the comparison the target uses
        ratio = paired_latency_ratio(ours, peer_paths["ort-quantize_static"], split.test.X, b, 3 * repeats)
        next(r for r in rows if r["model"] == key and r["name"] == DEFAULT_STATIC)[
            f"vs_ort_static_batch_{b}"
        ] = ratio
    return rows


def paired_latency_ratio(path_a: Path, path_b: Path, sample: torch.Tensor, batch: int, rounds: int) -> float:
    a, b = ort_session(path_a, spinning=False), ort_session(path_b, spinning=False)
    x = batch_of(sample, batch).numpy()  # real test images, as every other timing here
    return bench.paired_ratio(
        lambda: a.run(None, {"input": x}), lambda: b.run(None, {b.get_inputs()[0].name: x}), rounds
    )


def _row(name, key, tool, y, proba, n_boot, path, base_bytes, runtime, lat, base_lat, seconds, **extra):
    metrics = ort_peers.accuracy_with_ci(y, proba, n_boot)
    size = Path(path).stat().st_size
    return bench.row(
        name, key, tool, metrics, size, base_bytes, runtime, lat, base_lat[runtime], seconds, **extra
    )


def evaluate_targets(rows: list[dict]) -> list[dict]:
    targets = []
    for key, spec in MODELS.items():
        by = {r["name"]: r for r in rows if r["model"] == key}
        base, ours, peer = by["fp32"], by[DEFAULT_STATIC], by["ort-quantize_static"]
        drop = 100 * (base["metrics"]["accuracy"] - ours["metrics"]["accuracy"])
        targets.append(bench.target(f"{key}: int8 static accuracy drop", "<= 0.3 points", drop, drop <= 0.3))
        targets.append(
            bench.target(
                f"{key}: int8 static size ratio", ">= 3.9x", ours["size_ratio"], ours["size_ratio"] >= 3.9
            )
        )
        if spec.get("compute_bound"):
            targets.append(
                bench.target(
                    f"{key}: int8 static ORT speed-up at batch 64",
                    ">= 2.5x",
                    ours["latency_ratio_batch_64"],
                    ours["latency_ratio_batch_64"] >= 2.5,
                )
            )
        gap = 100 * (ours["metrics"]["accuracy"] - peer["metrics"]["accuracy"])
        targets.append(
            bench.target(f"{key}: pare int8 accuracy minus ORT quantize_static", ">= 0 points", gap, gap >= 0)
        )
        rel = ours["vs_ort_static_batch_64"]
        targets.append(
            bench.target(
                f"{key}: pare int8 latency / ORT quantize_static (batch 64, timed alternately)",
                "<= 1.05 (equal within timing noise, or better)",
                rel,
                rel <= 1.05,
            )
        )
    return targets


def main():
    args = bench.parse_args("quantization")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, spec in MODELS.items():
            print(f"\n== {key} ==", flush=True)
            rows += run_model(key, spec, args.quick, Path(tmp))
    targets = evaluate_targets(rows)

    def acc(r):
        lo, hi = r["metrics"]["accuracy_ci95"]
        return f"{r['metrics']['accuracy']:.4f} [{lo:.3f}, {hi:.3f}]"

    print()
    bench.print_table(
        rows,
        [
            ("model", lambda r: r["model"]),
            ("variant", lambda r: r["name"]),
            ("tool", lambda r: r["tool"]),
            ("accuracy [95% CI]", acc),
            ("bytes", lambda r: str(r["size_bytes"])),
            ("size x", lambda r: f"{r['size_ratio']:.2f}"),
            ("runtime", lambda r: r["runtime"]),
            ("b1 ms", lambda r: f"{r['latency_ms_by_batch'][r['runtime']]['batch_1']:.3f}"),
            ("b64 ms", lambda r: f"{r['latency_ms_by_batch'][r['runtime']]['batch_64']:.2f}"),
            ("speed-up b1", lambda r: f"{r.get('latency_ratio_batch_1') or 1:.2f}"),
            ("speed-up b64", lambda r: f"{r.get('latency_ratio_batch_64') or 1:.2f}"),
        ],
    )
    bench.print_targets(targets)
    bench.write("quantization", args, rows, targets)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
