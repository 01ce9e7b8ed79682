"""Regression as a task kind, through the whole pipeline, on scikit-learn's bundled diabetes set."""

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

import pare
from pare.recipes import load_recipe
from pare.recipes.pipeline import recipe_splits
from pare.tasks import get_task


def test_metrics_match_scikit_learn_and_intervals_hold_them():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    pred = y + rng.normal(scale=0.5, size=300)
    ev = get_task("regression").score(y, pred, bootstrap=300)
    assert ev.metrics["r2"] == pytest.approx(r2_score(y, pred))
    assert ev.metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    for k in ("r2", "mse", "rmse", "mae"):
        lo, hi = ev.metrics[f"{k}_ci95"]
        assert lo < ev.metrics[k] < hi


def test_resampled_metrics_equal_scikit_learn_on_each_resample():
    from pare.metrics.bootstrap import resample_indices
    from pare.metrics.regression import METRICS, _resampled

    rng = np.random.default_rng(1)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    idx = resample_indices(50, 5, seed=0)
    values = _resampled(y, pred, idx)
    for name, metric in METRICS.items():
        assert values[name] == pytest.approx([metric(y[i], pred[i]) for i in idx])


def test_drop_is_points_for_scores_and_percent_for_perplexity():
    assert get_task("regression").drop(0.50, 0.45) == pytest.approx(5.0)
    assert get_task("classification").drop(0.90, 0.92) == pytest.approx(-2.0)
    assert get_task("language_model").drop(20.0, 22.0) == pytest.approx(10.0)


def test_targets_are_standardised_on_the_training_part_only():
    recipe = load_recipe("diabetes")
    split = recipe_splits(recipe)[0]
    assert split.kind == "regression" and split.num_classes == 1
    assert split.train.y.dtype.is_floating_point
    assert float(split.train.y.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(split.train.y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert abs(float(split.test.y.mean())) > 1e-3  # the test part's own statistics were not used
    assert set(split.preprocessing["target"]) == {"mean", "std"}


def test_diabetes_recipe_runs_end_to_end(tmp_path):
    recipe = load_recipe("diabetes")
    recipe.evaluate.bootstrap = 200
    recipe.evaluate.latency_repeats = 5
    results = pare.run(recipe, tmp_path)
    base, pruned, int8 = results["stages"]
    assert results["task"]["kind"] == "regression" and results["task"]["headline"] == "r2"
    split = recipe_splits(recipe)[0]
    linear = LinearRegression().fit(split.train.X.numpy(), split.train.y.numpy())
    linear_r2 = r2_score(split.test.y.numpy(), linear.predict(split.test.X.numpy()))
    assert base["metrics"]["r2"] > linear_r2 - 0.1  # a real fit, near a linear model on the same split
    lo, hi = base["metrics"]["r2_ci95"]
    assert lo < base["metrics"]["r2"] < hi
    assert {"train_r2", "val_r2", "summary"} <= set(base["diagnosis"])
    assert pruned["cost"]["params"] < base["cost"]["params"]
    assert int8["cost"]["runtime"] == "onnxruntime" and int8["comparison"]["size_ratio"] > 4
    assert int8["cost"]["onnx_max_abs_diff"] < 0.1  # int8 ONNX Runtime against pare's simulation
    assert "r2_delta_ci95" in int8["comparison"]
    assert "train R²" in (tmp_path / "report.md").read_text()


def test_regression_cross_validation_uses_plain_folds(tmp_path, fast_recipe):
    recipe = fast_recipe(data={"source": "diabetes", "cv_folds": 3}, train={"epochs": 30, "lr": 0.003})
    results = pare.run(recipe, tmp_path, report=False)
    assert len(results["stages"][0]["folds"]) == 3
    assert results["stages"][0]["metrics"]["r2"] > 0.2
