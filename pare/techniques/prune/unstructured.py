"""Unstructured and N:M sparsity: masks over single weights, kept through fine-tuning by a hook,
stored as bitmask + values so that the file really shrinks."""

from __future__ import annotations

import torch
import torch.nn as nn

from pare.training.hooks import Hook


def threshold_masks(scores: dict[str, torch.Tensor], amount: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: ``amount`` removed in every layer, or over all layers at once."""
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = int(amount * flat.numel())
        if k == 0:
            return {n: torch.ones_like(s) for n, s in scores.items()}
        cut = flat.kthvalue(k).values
        return {n: (s > cut).float() for n, s in scores.items()}
    masks = {}
    for n, s in scores.items():
        k = int(amount * s.numel())
        masks[n] = (s > s.flatten().kthvalue(k).values).float() if k else torch.ones_like(s)
    return masks


def n_m_masks(scores: dict[str, torch.Tensor], n: int, m: int) -> dict[str, torch.Tensor]:
    """N:M: in every group of M consecutive input weights keep the N highest (2:4 = 50 %).
    Layers whose inputs per output are not a multiple of M are left out (the caller lists them)."""
    masks = {}
    for name, s in scores.items():
        rows = s.reshape(s.shape[0], -1)
        if rows.shape[1] % m:
            continue
        groups = rows.reshape(rows.shape[0], -1, m)
        keep = groups.topk(n, dim=2).indices
        mask = torch.zeros_like(groups).scatter_(2, keep, 1.0)
        masks[name] = mask.reshape(s.shape)
    return masks


class KeepMasks(Hook):
    """Re-apply the masks after every optimizer step: fine-tuning must not revive pruned weights."""

    def __init__(self, pairs: list[tuple[nn.Parameter, torch.Tensor]]):
        self.pairs = pairs

    def after_step(self, state) -> None:
        with torch.no_grad():
            for w, mask in self.pairs:
                w.mul_(mask)


class SparsityPenalty(Hook):
    """Sparsity training: L1 or L2 on the weights, or group lasso (L2 norm of each output
    channel, summed) to push whole channels towards zero before structured pruning."""

    def __init__(self, weights: list[nn.Parameter], kind: str, strength: float):
        self.weights, self.kind, self.strength = weights, kind, strength

    def loss_terms(self, state) -> dict[str, torch.Tensor]:
        if self.kind == "l1":
            term = sum(w.abs().sum() for w in self.weights)
        elif self.kind == "l2":
            term = sum(w.pow(2).sum() for w in self.weights)
        else:
            term = sum(w.reshape(w.shape[0], -1).norm(dim=1).sum() for w in self.weights)
        return {f"{self.kind}_penalty": self.strength * term}
