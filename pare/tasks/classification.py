"""Classification: cross-entropy, class probabilities, accuracy/F1/ROC with bootstrap intervals."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pare.metrics import (
    bootstrap_cis,
    bootstrap_deltas,
    classification_details,
    classification_metrics,
    fidelity,
    majority_accuracy,
)
from pare.tasks.base import Evaluation, Task, batched


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classification(Task):
    kind = "classification"
    headline = "accuracy"
    summary_metrics = ("accuracy", "f1_macro", "roc_auc")
    outputs_are_probabilities = True
    REPORTED = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")

    def report_metrics(self, metrics, classes):
        binary = ("precision", "recall", "f1") if len(classes) == 2 else ()
        return [*self.REPORTED[:2], *binary, *self.REPORTED[2:], "roc_auc", "log_loss"]

    def describe(self, split):
        return f"{split.num_classes} classes"

    def diagnose(self, model, split):
        """Overfitting: training accuracy more than 5 points above validation. Underfitting:
        validation accuracy closes less than half the gap between always predicting the
        majority class and perfect accuracy (both in eval mode)."""
        train_loss, train_acc = self.loss_and_accuracy(model, split.train)
        val_loss, val_acc = self.loss_and_accuracy(model, split.val)
        majority = majority_accuracy(split.train.y.numpy(), split.val.y.numpy())
        over = train_acc - val_acc > 0.05
        under = val_acc < majority + 0.5 * (1 - majority)
        notes = []
        if over:
            notes.append(
                f"overfitting: train accuracy {train_acc:.3f} vs validation {val_acc:.3f}; "
                f"try weight decay, dropout, fewer epochs or more data"
            )
        if under:
            notes.append(
                f"underfitting: validation accuracy {val_acc:.3f} is close to always predicting the "
                f"majority class ({majority:.3f}); train longer, raise the learning rate or widen the model"
            )
        return {
            "train_accuracy": train_acc,
            "val_accuracy": val_acc,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "majority_accuracy": majority,
            "overfitting": over,
            "underfitting": under,
            "notes": notes,
            "summary": f"train accuracy {train_acc:.4f}, validation {val_acc:.4f}, "
            f"majority-class accuracy {majority:.4f}",
        }

    def loss(self, outputs, y):
        return F.cross_entropy(outputs, y)

    def hits(self, outputs, y):
        return int((outputs.argmax(1) == y).sum())

    def outputs(self, run, part, batch_size=512):
        return softmax(batched(run, part.X, batch_size))

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0):
        classes = classes or [str(i) for i in range(outputs.shape[1])]
        metrics = classification_metrics(y, outputs)
        if bootstrap:
            metrics.update(bootstrap_cis(y, outputs, n_boot=bootstrap, confidence=confidence, seed=seed))
        return Evaluation(metrics, classification_details(y, outputs, classes), y, outputs)

    def agreement(self, outputs, reference, prefix=""):
        return {f"{prefix}{k}": v for k, v in fidelity(outputs, reference).items()}

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0):
        if not n_boot:
            return {}
        deltas = bootstrap_deltas(y, outputs, reference, n_boot=n_boot, confidence=confidence, seed=seed)
        return {k.replace("_ci", "_delta_ci", 1): v for k, v in deltas.items()}
