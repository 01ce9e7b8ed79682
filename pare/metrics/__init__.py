"""Quality metrics as pure functions; they know nothing of techniques."""

from pare.metrics.bootstrap import bootstrap_cis, bootstrap_deltas
from pare.metrics.classification import (
    classification_details,
    classification_metrics,
    fidelity,
    majority_accuracy,
    roc_curves,
)
from pare.metrics.ranking import mean_reciprocal_rank, perplexity, recall_at_k

__all__ = [
    "classification_metrics",
    "classification_details",
    "fidelity",
    "roc_curves",
    "majority_accuracy",
    "bootstrap_cis",
    "bootstrap_deltas",
    "recall_at_k",
    "mean_reciprocal_rank",
    "perplexity",
]
