"""Regression: one number per sample, mean squared error to train, R²/RMSE/MAE to judge.

Targets are standardised with the training part's mean and standard deviation (see
``pare.data.dataset``), so errors are in units of that standard deviation and R² is unchanged
by the scaling. The training history's "accuracy" is the share of predictions within half a
standard deviation of the target.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pare.metrics.regression import regression_cis, regression_deltas, regression_metrics
from pare.tasks.base import Evaluation, Task, batched

CLOSE = 0.5  # |error| below this many target standard deviations counts as a hit


class Regression(Task):
    kind = "regression"
    headline = "r2"
    summary_metrics = ("r2", "rmse", "mae")

    def describe(self, split):
        return "regression"

    def loss(self, outputs, y):
        return F.mse_loss(outputs.reshape(-1), y.float())

    def hits(self, outputs, y):
        return int(((outputs.reshape(-1) - y).abs() < CLOSE).sum())

    def outputs(self, run, part, batch_size=512):
        return batched(run, part.X, batch_size).reshape(-1)

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0):
        metrics = regression_metrics(y, outputs)
        if bootstrap:
            metrics.update(regression_cis(y, outputs, n_boot=bootstrap, confidence=confidence, seed=seed))
        return Evaluation(metrics, {}, y, outputs)

    def agreement(self, outputs, reference, prefix=""):
        diff = np.abs(np.asarray(outputs, dtype=np.float64) - reference)
        return {f"{prefix}max_abs_diff": float(diff.max()), f"{prefix}mean_abs_diff": float(diff.mean())}

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0):
        if not n_boot:
            return {}
        return regression_deltas(y, outputs, reference, n_boot=n_boot, confidence=confidence, seed=seed)

    def diagnose(self, model, split):
        """Overfitting: training R² more than 0.1 above validation. Underfitting: validation R²
        below 0.1, barely better than always predicting the training mean."""
        r2 = {
            name: regression_metrics(part.y.numpy(), self.outputs(model, part))["r2"]
            for name, part in (("train", split.train), ("val", split.val))
        }
        over, under = r2["train"] - r2["val"] > 0.1, r2["val"] < 0.1
        notes = []
        if over:
            notes.append(
                f"overfitting: train R² {r2['train']:.3f} vs validation {r2['val']:.3f}; "
                "try weight decay, dropout, fewer epochs or more data"
            )
        if under:
            notes.append(
                f"underfitting: validation R² {r2['val']:.3f} is close to predicting the mean; "
                "train longer, raise the learning rate or widen the model"
            )
        return {
            "train_r2": r2["train"],
            "val_r2": r2["val"],
            "overfitting": over,
            "underfitting": under,
            "notes": notes,
            "summary": f"train R² {r2['train']:.4f}, validation {r2['val']:.4f}",
        }
