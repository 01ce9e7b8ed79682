"""Weights tied into groups: each weight is ``sign * values[code]``.

k-means sharing (Han et al. 2016) gives codes from clustering and signs of +1; the hashing trick
(Chen et al. 2015) gives codes and signs from a seeded hash of the position. Fine-tuning keeps
every group tied by replacing each weight's gradient with its group's mean (sign-corrected):
with SGD or Adam, equal values that receive equal updates stay equal.
"""

from __future__ import annotations

import torch

from pare.formats.codebook import Tying, expand, kmeans_1d, nearest
from pare.training import Hook


def kmeans_tying(w: torch.Tensor, clusters: int, keep_zeros: bool, seed: int) -> Tying:
    flat = w.detach().reshape(-1)
    zeros = (flat == 0) if keep_zeros else torch.zeros_like(flat, dtype=torch.bool)
    if zeros.all():
        return Tying(torch.zeros_like(w, dtype=torch.long), 1, frozen=0)
    centroids = kmeans_1d(flat[~zeros].double().numpy(), clusters, seed)
    codes = nearest(flat.double(), centroids)
    if zeros.any():  # code 0 is the frozen zero, the clusters follow
        codes = torch.where(zeros, 0, codes + 1)
        return Tying(codes.reshape(w.shape), len(centroids) + 1, frozen=0)
    return Tying(codes.reshape(w.shape), len(centroids))


def group_mean(x: torch.Tensor, t: Tying) -> torch.Tensor:
    """Per shared value, the mean of ``sign * x`` over its weights (0 for an empty group)."""
    signed = x if t.signs is None else x * t.signs
    sums = torch.zeros(t.size, dtype=x.dtype).index_add_(0, t.codes.reshape(-1), signed.reshape(-1))
    counts = torch.bincount(t.codes.reshape(-1), minlength=t.size).clamp(min=1)
    out = sums / counts
    if t.frozen is not None:
        out[t.frozen] = 0
    return out


@torch.no_grad()
def tie(weight: torch.Tensor, t: Tying) -> torch.Tensor:
    """Set ``weight`` to its tied form (each group at its mean); returns the shared values."""
    values = group_mean(weight.detach(), t)
    weight.copy_(expand(values, t))
    return values


class TiedWeights(Hook):
    """Fine-tuning of the shared values: every weight of a group gets the group's mean gradient."""

    def __init__(self, tied: list[tuple[torch.nn.Parameter, Tying]]):
        self.tied = tied
        self.handles = []

    def on_train_start(self, state):
        self.handles = [w.register_hook(lambda g, t=t: expand(group_mean(g, t), t)) for w, t in self.tied]

    def on_train_end(self, state):
        for h in self.handles:
            h.remove()
        for w, t in self.tied:  # re-tie exactly (float rounding could drift across many steps)
            tie(w, t)
