"""Activation ranges from calibration data: min-max, moving-average min-max, percentile,
MSE-optimal and entropy (KL divergence of histograms, as TensorRT calibrates).

An observer sees every calibration batch; it keeps the exact extremes, a moving average of the
per-batch extremes, and a bounded random sample of values from which the percentile, MSE and
entropy ranges are computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_LIMIT = 200_000


class Observer:
    def __init__(
        self, method: str = "minmax", *, percentile: float = 99.99, momentum: float = 0.9, seed: int = 0
    ):
        self.method, self.percentile, self.momentum = method, percentile, momentum
        self.lo = math.inf
        self.hi = -math.inf
        self.avg_lo = self.avg_hi = None
        self.batches = 0
        self.samples: list[np.ndarray] = []
        self._n = 0
        self._rng = np.random.default_rng(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise ValueError("non-finite activation")
        lo, hi = x.min().item(), x.max().item()
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if self.avg_lo is None:
            self.avg_lo, self.avg_hi = lo, hi
        else:
            self.avg_lo = self.momentum * self.avg_lo + (1 - self.momentum) * lo
            self.avg_hi = self.momentum * self.avg_hi + (1 - self.momentum) * hi
        self.batches += 1
        flat = x.reshape(-1).numpy()
        keep = max(1, SAMPLE_LIMIT // 64)  # per batch, so every batch is represented
        if len(flat) > keep:
            flat = flat[self._rng.choice(len(flat), keep, replace=False)]
        self.samples.append(flat)
        self._n += len(flat)
        if self._n > 2 * SAMPLE_LIMIT:  # thin out uniformly, keeping the memory bounded
            allv = np.concatenate(self.samples)
            self.samples = [allv[self._rng.choice(len(allv), SAMPLE_LIMIT, replace=False)]]
            self._n = SAMPLE_LIMIT

    def range(self, bits: int = 8) -> tuple[float, float]:
        """The (lo, hi) to quantize with; always contains 0 so that zero is exact."""
        if self.batches == 0:
            raise ValueError("observer saw no data")
        if self.method == "minmax":
            lo, hi = self.lo, self.hi
        elif self.method == "moving_average":
            lo, hi = self.avg_lo, self.avg_hi
        else:
            values = np.concatenate(self.samples)
            if self.method == "percentile":
                lo, hi = np.percentile(values, [100 - self.percentile, self.percentile])
                lo, hi = max(lo, self.lo), min(hi, self.hi)
            elif self.method == "mse":
                lo, hi = mse_range(values, self.lo, self.hi, bits)
            else:
                lo, hi = entropy_range(values, self.lo, self.hi, bits)
        return min(float(lo), 0.0), max(float(hi), 0.0)


def _qdq_np(values: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    levels = 2**bits - 1
    scale = max(hi - lo, 1e-12) / levels
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, levels)
    return (q - zero) * scale


def mse_range(values: np.ndarray, lo: float, hi: float, bits: int) -> tuple[float, float]:
    """Shrink [lo, hi] towards 0 and keep the clip with the lowest mean squared error."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    best, best_err = (lo, hi), math.inf
    for ratio in np.linspace(1.0, 0.2, 41):
        err = float(np.mean((_qdq_np(values, lo * ratio, hi * ratio, bits) - values) ** 2))
        if err < best_err:
            best, best_err = (lo * ratio, hi * ratio), err
    return best


def entropy_range(
    values: np.ndarray, lo: float, hi: float, bits: int, bins: int = 2048
) -> tuple[float, float]:
    """Pick the clip threshold whose quantized histogram is closest (KL divergence) to the
    original. Works on magnitudes; a one-sided (e.g. post-ReLU) tensor keeps its lower end at 0."""
    one_sided = lo >= 0
    # Exact zeros (half of every post-ReLU tensor) are represented exactly whatever the range;
    # left in, their spike dominates the divergence and pushes the threshold far too low.
    mags = np.abs(values[values != 0])
    top = float(mags.max()) if len(mags) else 0.0
    if top == 0.0:
        return lo, hi
    hist, edges = np.histogram(mags, bins=bins, range=(0, top))
    hist = hist.astype(np.float64)
    levels = 2 ** (bits if one_sided else bits - 1)
    best_i, best_kl = bins, math.inf
    for i in range(levels, bins + 1, max(1, bins // 256)):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()  # outliers are clipped into the last bin
        # quantize the first i bins into `levels` groups, spreading each group's mass evenly
        # over the bins of the group that were non-empty
        groups = np.array_split(np.arange(i), levels)
        cand = np.zeros(i)
        for g in groups:  # built from the bins without the clipped mass, as TensorRT does
            nonzero = hist[g] > 0
            if nonzero.any():
                cand[g[nonzero]] = hist[g].sum() / nonzero.sum()
        p = ref / ref.sum()
        q = cand / max(cand.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = float(edges[best_i])
    return (0.0 if one_sided else -threshold), threshold
