"""``pare.evaluate``: a model's quality on a labelled set, with bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pare.data import Part
from pare.tasks import Evaluation, get_task
from pare.tasks.classification import softmax


def predict_proba(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = get_task("classification").outputs(model, Part(X, None), batch_size)
    model.train(was_training)
    return out


def score(
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[str] | None = None,
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Classification metrics (with intervals when ``bootstrap`` > 0) for given class probabilities."""
    return get_task("classification").score(
        y, proba, classes=classes, bootstrap=bootstrap, confidence=confidence, seed=seed
    )


def evaluate(
    model: nn.Module,
    data: Part,
    classes: list[str] | None = None,
    *,
    task: str = "classification",
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Score ``model`` on ``data`` (a ``Part``: inputs ``X`` and labels ``y``) for ``task``."""
    t = get_task(task)
    was_training = model.training
    model.eval()
    outputs = t.outputs(model, data)
    model.train(was_training)
    return t.score(
        data.y.numpy(), outputs, classes=classes, bootstrap=bootstrap, confidence=confidence, seed=seed
    )


def validation_metrics(model: nn.Module, split) -> dict[str, float]:
    """The task's metrics on a split's validation part, without intervals: what techniques and
    searches choose by (test data is for the final measurement only)."""
    return evaluate(model, split.val, split.classes, task=split.kind, bootstrap=0).metrics


__all__ = ["Evaluation", "evaluate", "predict_proba", "score", "softmax", "validation_metrics"]
