"""End-to-end runs of the stage loop, with the test-only technique from conftest as a stage."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits, load_iris

import pare
from pare.errors import ConfigError
from pare.recipes import load_recipe
from tests.conftest import APPLY_CALLS

STAGE_KEYS = {"name", "technique", "config", "metrics", "cost", "artifact", "seconds"}
COST_KEYS = {
    "params",
    "nonzero_params",
    "size_bytes",
    "flops",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_per_s",
    "peak_memory_bytes",
    "runtime",
}


def test_run_writes_results_report_and_compares_stages(tmp_path, fast_recipe):
    recipe = fast_recipe(
        evaluate={"onnx": True},
        stages=[{"technique": "zero_smallest", "name": "sparse", "fraction": 0.6, "finetune_epochs": 2}],
    )
    results = pare.run(recipe, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["stages"][1]["metrics"] == results["stages"][1]["metrics"]
    assert {"pare_version", "recipe", "seed", "task", "stages", "provenance"} <= set(on_disk)
    prov = on_disk["provenance"]  # run from this checkout: its commit, and the code that ran
    assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
    assert "pare/recipes/runner.py" in prov["sources"] and prov["seconds"] > 0 and prov["started"]
    assert on_disk["task"]["kind"] == "classification" and on_disk["task"]["n_test"] == 360
    base, sparse = on_disk["stages"]
    for stage in (base, sparse):
        assert set(stage) >= STAGE_KEYS and set(stage["cost"]) >= COST_KEYS
        assert (tmp_path / stage["artifact"]).stat().st_size == stage["cost"]["size_bytes"]
        assert {"accuracy", "f1_macro", "roc_auc", "accuracy_ci95"} <= set(stage["metrics"])
        lo, hi = stage["metrics"]["accuracy_ci95"]
        assert lo <= stage["metrics"]["accuracy"] <= hi
        # the same model measured in ONNX Runtime beside torch, agreeing on the predictions
        assert set(stage["cost"]["latency"]) == {"torch", "onnxruntime"}
        assert stage["cost"]["onnx_top1_agreement"] >= 0.99
    assert base["technique"] is None and sparse["technique"] == "zero_smallest"
    assert sparse["config"] == {"fraction": 0.6, "finetune_epochs": 2}
    assert base["metrics"]["accuracy"] > 0.9
    # the stage really zeroed weights, fine-tuned through a hook, and kept them zero
    assert sparse["cost"]["nonzero_params"] < 0.5 * base["cost"]["nonzero_params"]
    assert sparse["info"]["hook_steps"] == 2 * 19 and len(sparse["history"]["epochs"]) == 2
    cmp = sparse["comparison"]
    assert cmp["accuracy_delta"] == pytest.approx(sparse["metrics"]["accuracy"] - base["metrics"]["accuracy"])
    assert cmp["accuracy_delta_ci95"][0] <= cmp["accuracy_delta"] <= cmp["accuracy_delta_ci95"][1]
    assert cmp["size_ratio"] == pytest.approx(1.0, abs=0.01)  # zeros stored densely do not shrink the file
    assert {"flops_ratio", "latency_ratio", "latency_ratio_batch_16"} <= set(cmp)
    # each runtime against the baseline in that runtime; fidelity to the baseline's outputs
    assert cmp["latency_ratio_torch"] == pytest.approx(
        base["cost"]["latency"]["torch"]["batch_1"]["p50"]
        / sparse["cost"]["latency"]["torch"]["batch_1"]["p50"]
    )
    assert "latency_ratio_onnxruntime" in cmp and 0.5 <= cmp["top1_agreement"] <= cmp["top5_agreement"] <= 1
    assert cmp["kl_divergence"] >= 0
    drop = 100 * (base["val_metrics"]["accuracy"] - sparse["val_metrics"]["accuracy"])
    assert sparse["val_drop"] == pytest.approx(drop)
    # the stage worked on a copy: the baseline's saved weights have no zeroed matrix
    weights = load_file(tmp_path / base["artifact"])
    assert all((w != 0).float().mean() > 0.95 for k, w in weights.items() if w.dim() > 1)
    # the report: tables and embedded plots
    md = (tmp_path / "report.md").read_text()
    assert "| torch b1 | torch × | ORT b1 | ORT × | ships |" in md
    assert "| sparse |" in md and "(plots/pareto.png)" in md and f"commit {prov['commit'][:10]}" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and 'src="http' not in page
    for plot in ("training.png", "roc.png", "pareto.png", "confusion-baseline.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000


def test_a_stage_that_loses_more_than_warn_drop_on_validation_is_flagged(tmp_path, fast_recipe, capsys):
    wrecked = {"technique": "zero_smallest", "name": "wrecked", "fraction": 0.97, "finetune_epochs": 0}
    results = pare.run(fast_recipe(stages=[wrecked]), tmp_path)
    base, stage = results["stages"]
    assert stage["val_drop"] > 1.0 and "warning" not in base
    assert stage["warning"].startswith(f"lost {stage['val_drop']:.2f} validation points of accuracy")
    assert "evaluate.warn_drop: 1.0" in stage["warning"]
    assert f"wrecked: {stage['warning']}" in " ".join(capsys.readouterr().err.split())  # said as it ran
    assert f"**Warning**, wrecked: {stage['warning']}" in (tmp_path / "report.md").read_text()
    quiet = pare.run(
        fast_recipe(stages=[wrecked], evaluate={"warn_drop": None}), tmp_path / "q", report=False
    )
    assert "warning" not in quiet["stages"][1] and quiet["stages"][1]["val_drop"] > 1.0


def test_stage_shipping_an_onnx_artifact_is_measured_in_onnxruntime(tmp_path, fast_recipe):
    results = pare.run(
        fast_recipe(evaluate={"onnx": True}, stages=[{"technique": "ship_onnx", "name": "ort"}]),
        tmp_path,
        report=False,
    )
    base, ort = results["stages"]
    cost = ort["cost"]
    assert cost["runtime"] == "onnxruntime" and ort["artifact"].endswith("shipped.onnx")
    assert cost["size_bytes"] == (tmp_path / ort["artifact"]).stat().st_size
    assert cost["latency_ms_p50"] == cost["latency"]["onnxruntime"]["batch_1"]["p50"]
    cmp = ort["comparison"]
    assert cmp["latency_runtime"] == "onnxruntime"
    expected = base["cost"]["latency"]["onnxruntime"]["batch_1"]["p50"] / cost["latency_ms_p50"]
    assert cmp["latency_ratio"] == pytest.approx(expected)
    # quality measured by running the shipped file: same model, so the same predictions
    assert abs(cmp["accuracy_delta"]) <= 1 / 360


def test_resume_skips_finished_stages_and_reruns_changed_ones(tmp_path, fast_recipe):
    stages = [
        {"technique": "zero_smallest", "name": "a", "fraction": 0.3},
        {"technique": "zero_smallest", "name": "b", "fraction": 0.5},
    ]
    first = pare.run(fast_recipe(stages=stages), tmp_path, report=False)
    APPLY_CALLS.clear()
    with pytest.raises(ConfigError, match="already holds a run .* --resume .* --overwrite"):
        pare.run(fast_recipe(stages=stages), tmp_path)
    again = pare.run(fast_recipe(stages=stages), tmp_path, resume=True, report=False)
    assert APPLY_CALLS == []
    assert [s["metrics"] for s in again["stages"]] == [s["metrics"] for s in first["stages"]]
    changed = [stages[0], {**stages[1], "fraction": 0.7}]
    third = pare.run(fast_recipe(stages=changed), tmp_path, resume=True, report=False)
    assert APPLY_CALLS == ["b"]
    assert third["stages"][1]["seconds"] == first["stages"][1]["seconds"]  # reused, not re-measured
    assert third["stages"][2]["cost"]["nonzero_params"] < first["stages"][2]["cost"]["nonzero_params"]


def test_interrupted_run_keeps_finished_stages(tmp_path, fast_recipe):
    import tests.conftest as conftest

    stages = [{"technique": "zero_smallest", "name": "a"}, {"technique": "zero_smallest", "name": "b"}]
    original = conftest.zero_smallest

    found = []  # what each attempt at b found in its work folder

    def interrupt_b(model, config, ctx):
        if ctx.name == "b":
            found.append(sorted(p.name for p in ctx.work_dir.glob("*")))
            if len(found) == 1:  # the first attempt leaves work in progress, then is interrupted
                ctx.work_dir.mkdir()
                (ctx.work_dir / "half-done").write_text("1")
                (ctx.out_dir / "partial-artifact").write_text("1")
                raise KeyboardInterrupt
        return original(model, config, ctx)

    from pare.registry import _REGISTRY

    technique = _REGISTRY["zero_smallest"]
    _REGISTRY["zero_smallest"] = dataclasses.replace(technique, apply=interrupt_b)
    try:
        with pytest.raises(KeyboardInterrupt):
            pare.run(fast_recipe(stages=stages), tmp_path, report=False)
    finally:
        _REGISTRY["zero_smallest"] = technique
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in saved["stages"]] == ["baseline", "a"]
    APPLY_CALLS.clear()
    _REGISTRY["zero_smallest"] = dataclasses.replace(technique, apply=interrupt_b)
    try:
        resumed = pare.run(fast_recipe(stages=stages), tmp_path, resume=True, report=False)
    finally:
        _REGISTRY["zero_smallest"] = technique
    assert APPLY_CALLS == ["b"] and len(resumed["stages"]) == 3
    # --resume kept b's work in progress (and nothing else of the unfinished stage); once b was
    # built, its work folder went
    assert found == [[], ["half-done"]]
    stage = next(tmp_path.glob("stages/*-b"))
    assert not (stage / "work").exists() and not (stage / "partial-artifact").exists()


def test_breast_cancer_reports_roc_auc_with_interval(tmp_path):
    recipe = load_recipe("breast_cancer")
    recipe.train.epochs = 15
    recipe.evaluate.onnx = False
    recipe.evaluate.latency_repeats = 5
    results = pare.run(recipe, tmp_path)
    m = results["stages"][0]["metrics"]
    assert m["roc_auc"] > 0.97
    lo, hi = m["roc_auc_ci95"]
    assert lo <= m["roc_auc"] <= hi and hi - lo < 0.1
    assert {"precision", "recall", "f1"} <= set(m)


def test_cross_validation_reports_mean_and_std(tmp_path, fast_recipe):
    recipe = fast_recipe(
        data={"source": "wine", "cv_folds": 5},
        train={"epochs": 20, "batch_size": 16},
        stages=[{"technique": "zero_smallest", "fraction": 0.2}],
    )
    results = pare.run(recipe, tmp_path)
    base = results["stages"][0]
    assert len(base["folds"]) == 5
    accs = [f["accuracy"] for f in base["folds"]]
    assert base["metrics"]["accuracy"] == pytest.approx(np.mean(accs))
    assert base["metrics_std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert base["metrics"]["accuracy"] > 0.85
    assert len(results["stages"][1]["folds"]) == 5
    assert len(list((tmp_path / "stages" / "01-zero_smallest-1").glob("fold*/model.safetensors"))) == 5
    assert "±" in (tmp_path / "report.md").read_text()


def test_cross_validation_ships_each_fold_into_its_own_folder(tmp_path, fast_recipe):
    """Every fold's export lands in its own folder; the stage's size and ONNX Runtime figures
    come from fold 0's artifact (they once came from whichever fold wrote the shared file last)."""
    recipe = fast_recipe(
        data={"source": "wine", "cv_folds": 3},
        train={"epochs": 3, "batch_size": 16},
        stages=[{"technique": "ship_onnx"}],
    )
    results = pare.run(recipe, tmp_path, report=False)
    stage = results["stages"][1]
    folder = tmp_path / "stages" / "01-ship_onnx-1"
    shipped = [folder / f"fold{k}" / "shipped.onnx" for k in range(3)]
    assert all(p.exists() for p in shipped) and not (folder / "shipped.onnx").exists()
    assert len({p.read_bytes() for p in shipped}) == 3  # three folds, three different models
    assert stage["artifact"] == "stages/01-ship_onnx-1/fold0/shipped.onnx"
    assert stage["cost"]["size_bytes"] == shipped[0].stat().st_size
    assert stage["cost"]["onnx_top1_agreement"] == 1.0
    resumed = pare.run(recipe, tmp_path, resume=True, report=False)  # every fold reloads its own weights
    assert resumed["stages"][1]["metrics"] == stage["metrics"]


def test_csv_dataset_end_to_end(tmp_path, fast_recipe):
    iris = load_iris()
    lines = ["sepal_l,sepal_w,petal_l,petal_w,species"]
    lines += [",".join(map(str, x)) + f",{iris.target_names[t]}" for x, t in zip(iris.data, iris.target)]
    (tmp_path / "iris.csv").write_text("\n".join(lines))
    recipe = fast_recipe(
        data={"source": "csv", "path": str(tmp_path / "iris.csv"), "label_column": "species"},
        train={"epochs": 40, "batch_size": 16},
    )
    results = pare.run(recipe, tmp_path / "out")
    assert results["task"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert results["stages"][0]["metrics"]["accuracy"] > 0.85


def test_image_folder_end_to_end(tmp_path, fast_recipe):
    digits = load_digits()
    root = tmp_path / "images"
    for i, (img, label) in enumerate(zip(digits.images[:600], digits.target[:600])):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((16, 16)).save(folder / f"{i}.png")
    recipe = fast_recipe(
        data={"source": "image_folder", "path": str(root), "image_size": [12, 12]},
        model={"name": "cnn", "args": {"width": 8}},
        train={"epochs": 15, "batch_size": 32},
    )
    results = pare.run(recipe, tmp_path / "out")
    assert results["task"]["input_shape"] == [1, 12, 12]
    assert results["stages"][0]["metrics"]["accuracy"] > 0.8


def test_python_api_compress_leaves_input_alone(digits_split):
    import torch

    from tests.conftest import ZeroSmallestConfig

    model = pare.build_model(load_recipe("default").model, digits_split.input_shape, 10)
    before = [p.clone() for p in model.parameters()]
    compressed, info = pare.compress(model, ZeroSmallestConfig(fraction=0.5), digits_split)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert pare.profile(compressed, digits_split.test.X[:1])["nonzero_params"] < 0.6 * sum(
        p.numel() for p in before
    )
    ev = pare.evaluate(compressed, digits_split.test, digits_split.classes, bootstrap=50)
    assert 0 <= ev.metrics["accuracy"] <= 1 and "accuracy_ci95" in ev.metrics
    assert info["zeroed"] > 0
