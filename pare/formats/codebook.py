"""Weights as shared values: each weight is ``sign * values[code]``.

A ``Tying`` holds the codes (and signs); k-means gives codes by clustering (Han et al. 2016),
the hashing trick a seeded hash of the position (Chen et al. 2015), so a hashed layer stores
only its values and a seed. Used by the ``quantize`` codebook scheme and by ``share``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Tying:
    codes: torch.Tensor  # int64, the weight's shape: which shared value each weight uses
    size: int  # number of shared values
    signs: torch.Tensor | None = None  # +-1 per weight (hashing), None for all +1
    frozen: int | None = None  # a code whose value stays exactly zero (pruned weights)


def kmeans_1d(values: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """At most ``k`` sorted centroids of 1-D ``values``; exact when they hold ``k`` or fewer
    distinct numbers (so clustering an already shared layer changes nothing)."""
    from sklearn.cluster import KMeans

    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct
    rng = np.random.default_rng(seed)
    sample = values if len(values) <= 20000 else rng.choice(values, 20000, replace=False)
    # initialise on quantiles: deterministic and already close for bell-shaped weights
    init = np.unique(np.quantile(sample, (np.arange(k) + 0.5) / k)).reshape(-1, 1)
    km = KMeans(n_clusters=len(init), init=init, n_init=1, max_iter=100, random_state=seed)
    return np.sort(km.fit(sample.reshape(-1, 1)).cluster_centers_.ravel())


def nearest(values: torch.Tensor, centroids: np.ndarray) -> torch.Tensor:
    """Index of the closest centroid for every value (same shape as ``values``)."""
    table = torch.as_tensor(centroids, dtype=values.dtype)
    return (values.reshape(-1, 1) - table[None, :]).abs().argmin(1).reshape(values.shape)


def hash_size(numel: int, compression: float) -> int:
    return max(1, round(numel / compression))


def hash_tying(shape, size: int, seed: int) -> Tying:
    """A seeded pseudo-random code and sign per position: nothing to store but the seed."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(size, tuple(shape), generator=g)
    signs = torch.randint(2, tuple(shape), generator=g).float() * 2 - 1
    return Tying(codes, size, signs)


def expand(values: torch.Tensor, t: Tying) -> torch.Tensor:
    w = values[t.codes]
    return w if t.signs is None else w * t.signs
