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


def _resampled(name: str, y, pred, idx) -> np.ndarray:
    return np.array([METRICS[name](y[i], pred[i]) for i in idx])


def regression_cis(y, pred, *, n_boot=1000, confidence=0.95, seed=0) -> dict:
    """``{"<metric>_ci95": [lo, hi]}`` over bootstrap resamples of the samples."""
    idx = resample_indices(len(y), n_boot, seed)
    suffix = f"_ci{round(confidence * 100)}"
    return {name + suffix: interval(_resampled(name, y, pred, idx), confidence) for name in METRICS}


def regression_deltas(y, pred, reference, *, n_boot=1000, confidence=0.95, seed=0) -> dict:
    """Paired intervals of ``metric(pred) - metric(reference)`` on the same resampled samples."""
    idx = resample_indices(len(y), n_boot, seed)
    suffix = f"_delta_ci{round(confidence * 100)}"
    return {
        name + suffix: interval(
            _resampled(name, y, pred, idx) - _resampled(name, y, reference, idx), confidence
        )
        for name in METRICS
    }
