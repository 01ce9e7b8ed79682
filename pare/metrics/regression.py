"""Regression metrics (scikit-learn) and their bootstrap intervals, paired or not."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from pare.metrics.bootstrap import interval, resample_indices

METRICS = {
    "r2": r2_score,
    "mse": mean_squared_error,
    "rmse": lambda y, p: float(np.sqrt(mean_squared_error(y, p))),
    "mae": mean_absolute_error,
}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {name: float(f(y, pred)) for name, f in METRICS.items()}


def _resampled(y, pred, idx) -> dict[str, np.ndarray]:
    """Every metric on every resample at once (rows of ``idx``), as ``METRICS`` computes each."""
    yy = np.asarray(y, dtype=np.float64)[idx]
    err = np.asarray(pred, dtype=np.float64)[idx] - yy
    mse = (err**2).mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant resample has no R² (dropped)
        r2 = 1 - (err**2).sum(1) / ((yy - yy.mean(1, keepdims=True)) ** 2).sum(1)
    return {"r2": r2, "mse": mse, "rmse": np.sqrt(mse), "mae": np.abs(err).mean(1)}


def regression_cis(y, pred, *, n_boot=1000, confidence=0.95, seed=0) -> dict:
    """``{"<metric>_ci95": [lo, hi]}`` over bootstrap resamples of the samples."""
    values = _resampled(y, pred, resample_indices(len(y), n_boot, seed))
    suffix = f"_ci{round(confidence * 100)}"
    return {name + suffix: interval(v, confidence) for name, v in values.items()}


def regression_deltas(y, pred, reference, *, n_boot=1000, confidence=0.95, seed=0) -> dict:
    """Paired intervals of ``metric(pred) - metric(reference)`` on the same resampled samples."""
    idx = resample_indices(len(y), n_boot, seed)
    ours, theirs = _resampled(y, pred, idx), _resampled(y, reference, idx)
    suffix = f"_delta_ci{round(confidence * 100)}"
    return {name + suffix: interval(ours[name] - theirs[name], confidence) for name in METRICS}
