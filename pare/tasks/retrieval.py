"""Retrieval: a query and its passage per row (``X`` is (N, 2, L) token ids); the model maps
token ids to L2-normalised embeddings.

Training is in-batch contrastive (each query's own passage against the batch's other
passages); evaluation ranks every passage of the part for every query by cosine similarity:
Recall@1/5/10 and MRR, with bootstrap intervals over queries. Against the baseline the
sensitive signal is the mean cosine of each embedding to the baseline's embedding of the same
text, reported beside the metric deltas.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pare.metrics.bootstrap import bootstrap_mean_deltas, bootstrap_means
from pare.metrics.ranking import query_ranks, ranking_values
from pare.tasks.base import Evaluation, Task, batched

SCALE = 20.0  # inverse temperature of the contrastive loss (sentence-transformers' default)


class Retrieval(Task):
    kind = "retrieval"
    headline = "recall_at_1"
    summary_metrics = ("recall_at_1", "recall_at_10", "mrr")

    def inputs(self, X):
        return X.reshape(-1, X.shape[-1])  # query, passage, query, passage, ...

    def output_rows(self, indices):
        return torch.stack([2 * indices, 2 * indices + 1], 1).reshape(-1)

    def loss(self, outputs, y):
        q, p = outputs[0::2], outputs[1::2]
        return F.cross_entropy(SCALE * q @ p.T, torch.arange(len(q)))

    def hits(self, outputs, y):
        q, p = outputs[0::2], outputs[1::2]
        return int(((q @ p.T).argmax(1) == torch.arange(len(q))).sum())

    def outputs(self, run, part, batch_size=64):
        return batched(run, self.inputs(part.X), batch_size)

    def _values(self, outputs):
        q, p = outputs[0::2], outputs[1::2]
        return ranking_values(query_ranks(q @ p.T, np.arange(len(q))))

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0):
        values = self._values(outputs)
        metrics = {k: float(v.mean()) for k, v in values.items()}
        if bootstrap:
            metrics.update(bootstrap_means(values, n_boot=bootstrap, confidence=confidence, seed=seed))
        ranks = 1 / values["mrr"] - 1
        details = {
            "n_queries": len(ranks),
            "n_passages": len(ranks),
            "median_rank": float(np.median(ranks) + 1),
        }
        return Evaluation(metrics, details, y, outputs)

    def agreement(self, outputs, reference, prefix=""):
        return {f"{prefix}cosine": float(_cosines(outputs, reference).mean())}

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0):
        out = {}
        if n_boot:
            deltas = bootstrap_mean_deltas(
                self._values(outputs),
                self._values(reference),
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
            out = {k.replace("_ci", "_delta_ci", 1): v for k, v in deltas.items()}
        cosine = _cosines(outputs, reference)
        out["embedding_cosine"] = float(cosine.mean())
        out["embedding_cosine_min"] = float(cosine.min())
        return out


def _cosines(a, b) -> np.ndarray:
    return (np.asarray(a) * np.asarray(b)).sum(1)  # rows are L2-normalised
