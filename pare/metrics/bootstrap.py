"""Bootstrap confidence intervals for the headline metrics, and for differences between two
models scored on the same test samples (paired: both see the same resamples).

The metrics are recomputed for all resamples at once with NumPy (thousands of scikit-learn
calls would take seconds per stage); tests check they equal scikit-learn on the full sample.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

CI_METRICS = ("accuracy", "f1_macro", "roc_auc")


def _accuracy(y, proba):  # y: (B, n), proba: (B, n, K)
    return (proba.argmax(-1) == y).mean(1)


def _f1_macro(y, proba):
    pred = proba.argmax(-1)
    scores = []
    for c in range(proba.shape[-1]):
        tp = ((pred == c) & (y == c)).sum(1)
        fp = ((pred == c) & (y != c)).sum(1)
        fn = ((pred != c) & (y == c)).sum(1)
        denom = 2 * tp + fp + fn
        # A class absent from both truth and prediction does not count (as in scikit-learn).
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan))
    return np.nanmean(np.stack(scores), axis=0)


def _roc_auc(y, proba):
    k = proba.shape[-1]
    classes = [1] if k == 2 else range(k)
    n = y.shape[1]
    aucs = []
    for c in classes:
        pos = y == c
        n_pos = pos.sum(1)
        ranks = rankdata(proba[:, :, c], axis=1)  # ties share their average rank
        u = (ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2  # Mann-Whitney U of the positives
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where((n_pos > 0) & (n_pos < n), u / (n_pos * (n - n_pos)), np.nan))
    return np.nanmean(np.stack(aucs), axis=0)


_FUNCS = {"accuracy": _accuracy, "f1_macro": _f1_macro, "roc_auc": _roc_auc}


def resampled_metric(name: str, y: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``name`` computed on each row of resample indices ``idx`` (B, n); returns (B,)."""
    out = []
    for chunk in np.array_split(idx, max(1, len(idx) // 100)):  # bound memory on large test sets
        out.append(_FUNCS[name](y[chunk], proba[chunk]))
    return np.concatenate(out)


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(values: np.ndarray, confidence: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def bootstrap_cis(y, proba, *, n_boot=1000, confidence=0.95, seed=0, metrics=CI_METRICS) -> dict:
    """``{"<metric>_ci95": [lo, hi]}`` (the suffix follows ``confidence``)."""
    y, proba = np.asarray(y), np.asarray(proba)
    idx = resample_indices(len(y), n_boot, seed)
    suffix = f"_ci{round(confidence * 100)}"
    out = {}
    for name in metrics:
        ci = interval(resampled_metric(name, y, proba, idx), confidence)
        if ci is not None:
            out[name + suffix] = ci
    return out


def bootstrap_deltas(
    y, proba, proba_ref, *, n_boot=1000, confidence=0.95, seed=0, metrics=CI_METRICS
) -> dict:
    """Paired intervals of ``metric(proba) - metric(proba_ref)`` on the same samples."""
    y, proba, proba_ref = np.asarray(y), np.asarray(proba), np.asarray(proba_ref)
    idx = resample_indices(len(y), n_boot, seed)
    suffix = f"_ci{round(confidence * 100)}"
    out = {}
    for name in metrics:
        diff = resampled_metric(name, y, proba, idx) - resampled_metric(name, y, proba_ref, idx)
        ci = interval(diff, confidence)
        if ci is not None:
            out[name + suffix] = ci
    return out


def bootstrap_means(values: dict[str, np.ndarray], *, n_boot=1000, confidence=0.95, seed=0) -> dict:
    """Intervals of metrics that are means of per-sample values (hit@K, reciprocal rank, ...)."""
    suffix = f"_ci{round(confidence * 100)}"
    out = {}
    for name, v in values.items():
        idx = resample_indices(len(v), n_boot, seed)
        out[name + suffix] = interval(np.asarray(v, dtype=np.float64)[idx].mean(1), confidence)
    return out


def bootstrap_mean_deltas(
    values: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, n_boot=1000, confidence=0.95, seed=0
) -> dict:
    """Paired intervals of ``mean(values) - mean(reference)`` over the same resampled samples."""
    diffs = {k: np.asarray(v, dtype=np.float64) - reference[k] for k, v in values.items() if k in reference}
    return bootstrap_means(diffs, n_boot=n_boot, confidence=confidence, seed=seed)
