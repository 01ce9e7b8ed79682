"""Retrieval and language-model quality: Recall@K, MRR, perplexity."""

from __future__ import annotations

import math

import numpy as np


def query_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """``scores`` (Q, P): similarity of each query to each passage; ``relevant`` (Q,): the index
    of each query's passage. Returns each relevant passage's 0-based rank (ties resolved in the
    query's favour)."""
    scores = np.asarray(scores)
    target = scores[np.arange(len(relevant)), relevant][:, None]
    return (scores > target).sum(1)


def ranking_values(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-query hit@K and reciprocal rank: the metrics are their means."""
    out = {f"recall_at_{k}": (ranks < k).astype(np.float64) for k in ks}
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K: the share of queries whose passage ranks in the top K."""
    values = ranking_values(query_ranks(scores, relevant), ks)
    return {f"recall_at_{k}": float(values[f"recall_at_{k}"].mean()) for k in ks}


def mean_reciprocal_rank(scores: np.ndarray, relevant: np.ndarray) -> float:
    return float((1.0 / (query_ranks(scores, relevant) + 1)).mean())


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (natural log)."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got n_tokens={n_tokens}")
    return float(math.exp(total_nll / n_tokens))
