"""Retrieval and language-model quality: Recall@K, MRR, perplexity."""

from __future__ import annotations

import math

import numpy as np


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """``scores`` (Q, P): similarity of each query to each passage; ``relevant`` (Q,): the index
    of each query's passage. Recall@K is the share of queries whose passage ranks in the top K."""
    scores = np.asarray(scores)
    target = scores[np.arange(len(relevant)), relevant][:, None]
    rank = (scores > target).sum(1)  # 0-based rank; ties resolved in the query's favour
    return {f"recall_at_{k}": float((rank < k).mean()) for k in ks}


def mean_reciprocal_rank(scores: np.ndarray, relevant: np.ndarray) -> float:
    scores = np.asarray(scores)
    target = scores[np.arange(len(relevant)), relevant][:, None]
    rank = (scores > target).sum(1) + 1
    return float((1.0 / rank).mean())


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (natural log)."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got n_tokens={n_tokens}")
    return float(math.exp(total_nll / n_tokens))
