"""Classification quality from predicted probabilities, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Headline numbers, all higher-is-better except ``log_loss``.

    ``proba`` is (N, K) class probabilities. Binary tasks add ``precision``/``recall``/``f1`` of
    class 1 and ``roc_auc`` of its score; multiclass ``roc_auc`` is one-vs-rest, macro-averaged,
    and is left out when a class is missing from ``y_true`` (it is undefined then).
    """
    y_true = np.asarray(y_true)
    k = proba.shape[1]
    labels = list(range(k))
    y_pred = proba.argmax(1)
    out: dict[str, float] = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
    }
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    if k == 2:
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
        out.update({"precision": p, "recall": r, "f1": f})
    present = np.unique(y_true)
    if k == 2 and len(present) == 2:
        out["roc_auc"] = skm.roc_auc_score(y_true, proba[:, 1])
    elif len(present) == k:
        out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)
    out["log_loss"] = skm.log_loss(y_true, np.clip(proba, 1e-7, 1), labels=labels)
    return {name: float(v) for name, v in out.items()}


def classification_details(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true, cols: predicted)."""
    labels = list(range(len(classes)))
    y_pred = proba.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, tuple]:
    """(fpr, tpr, auc) for the positive class (binary) or each class against the rest."""
    if proba.shape[1] == 2:
        targets = {classes[1]: (y_true == 1, proba[:, 1])}
    else:
        targets = {name: (y_true == i, proba[:, i]) for i, name in enumerate(classes)}
    out = {}
    for name, (positive, score) in targets.items():
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positive, score)
        out[name] = (fpr, tpr, float(skm.auc(fpr, tpr)))
    return out


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always predicting the training set's most common class: the trivial baseline."""
    majority = np.bincount(y_train).argmax()
    return float((np.asarray(y_test) == majority).mean())


def fidelity(probs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How closely class probabilities ``probs`` follow ``reference`` (the fp32 model's) on the
    same inputs, labels or not: top-1 agreement (same arg-max), top-5 agreement (the
    reference's top class among the five most likely) and the mean KL(reference ‖ probs) in nats."""
    top1 = probs.argmax(1) == reference.argmax(1)
    k = min(5, probs.shape[1])
    top5 = (np.argsort(-probs, axis=1)[:, :k] == reference.argmax(1)[:, None]).any(1)
    eps = 1e-12  # a probability that underflowed to 0 would make the divergence infinite
    kl = (reference * (np.log(reference + eps) - np.log(probs + eps))).sum(1)
    return {
        "top1_agreement": float(top1.mean()),
        "top5_agreement": float(top5.mean()),
        "kl_divergence": float(kl.mean()),
    }
