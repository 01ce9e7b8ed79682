"""``pare.evaluate``: a model's quality on a labelled set, with bootstrap confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from pare.data import Part
from pare.metrics import bootstrap_cis, classification_details, classification_metrics


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict
    y: np.ndarray
    proba: np.ndarray


@torch.no_grad()
def predict_proba(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = [torch.softmax(model(X[i : i + batch_size]).float(), dim=1) for i in range(0, len(X), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[str] | None = None,
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Metrics (with intervals when ``bootstrap`` > 0) for given class probabilities."""
    classes = classes or [str(i) for i in range(proba.shape[1])]
    metrics = classification_metrics(y, proba)
    if bootstrap:
        metrics.update(bootstrap_cis(y, proba, n_boot=bootstrap, confidence=confidence, seed=seed))
    return Evaluation(metrics, classification_details(y, proba, classes), y, proba)


def evaluate(
    model: nn.Module,
    data: Part,
    classes: list[str] | None = None,
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """Score ``model`` on ``data`` (a ``Part``: inputs ``X`` and labels ``y``)."""
    return score(
        data.y.numpy(),
        predict_proba(model, data.X),
        classes,
        bootstrap=bootstrap,
        confidence=confidence,
        seed=seed,
    )
