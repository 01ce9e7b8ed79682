"""Importance criteria: small callables returning one score per output channel of a layer
(structured) or per weight (unstructured). Low scores are pruned first."""

from __future__ import annotations

import torch
import torch.nn as nn


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


def weight_scores(module: nn.Module, criterion: str, grads: dict | None = None) -> torch.Tensor:
    """Per-weight scores for unstructured pruning."""
    w = module.weight.detach()
    if criterion in ("l1", "l2"):
        return w.abs()
    if criterion == "taylor":
        return (w * grads[module]).abs()  # first-order estimate of the loss change |w dL/dw|
    if criterion == "random":
        return torch.rand_like(w)
    raise ValueError(f"criterion {criterion!r} scores channels, not single weights")


def channel_scores(module: nn.Module, criterion: str, grads: dict | None = None) -> torch.Tensor:
    """Per-output-channel scores of a Conv2d/Linear producer."""
    w = _rows(module.weight)
    if criterion == "l1":
        return w.abs().sum(1)
    if criterion == "l2":
        return w.pow(2).sum(1).sqrt()
    if criterion == "taylor":
        return (w * _rows(grads[module])).sum(1).abs()  # Taylor expansion on the whole filter
    if criterion == "random":
        return torch.rand(w.shape[0])
    raise ValueError(f"criterion {criterion!r} needs activations or BatchNorm, not weights")


@torch.no_grad()
def activation_entropy(outputs: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Luo & Wu (2017): entropy of each channel's globally pooled activation over samples.
    A channel whose output hardly varies carries little information. ``outputs``: (N, C, ...)."""
    pooled = outputs.reshape(outputs.shape[0], outputs.shape[1], -1).mean(2)  # (N, C)
    scores = []
    for c in range(pooled.shape[1]):
        x = pooled[:, c]
        if x.max() - x.min() < 1e-12:
            scores.append(torch.tensor(0.0))
            continue
        hist = torch.histc(x, bins=bins, min=x.min().item(), max=x.max().item())
        p = hist[hist > 0] / hist.sum()
        scores.append(-(p * p.log()).sum())
    return torch.stack(scores)


def gradients(model: nn.Module, modules: list[nn.Module], batches, task: str = "classification") -> dict:
    """Summed dL/dw of each module's weight over a few training batches (for Taylor scores),
    with the task's own loss."""
    from pare.tasks import get_task

    t = get_task(task)
    grads = {m: torch.zeros_like(m.weight) for m in modules}
    was_training = model.training
    model.eval()  # BatchNorm statistics must not move while scoring
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        t.loss(model(t.inputs(x)), y).backward()
        for m in modules:
            if m.weight.grad is not None:
                grads[m] += m.weight.grad.detach()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads
