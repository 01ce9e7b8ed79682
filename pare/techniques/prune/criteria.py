"""Importance criteria: small callables returning one score per output channel of a layer
(structured) or per weight (unstructured). Low scores are pruned first."""

from __future__ import annotations

import torch
import torch.nn as nn

from pare.tasks import get_task


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


# criterion name -> score(weight, grad) per weight, and per output channel (rows of the weight)
WEIGHT_CRITERIA = {
    "l1": lambda w, g: w.abs(),
    "l2": lambda w, g: w.abs(),
    "taylor": lambda w, g: (w * g).abs(),  # first-order estimate of the loss change |w dL/dw|
    "random": lambda w, g: torch.rand_like(w),
}
CHANNEL_CRITERIA = {
    "l1": lambda w, g: w.abs().sum(1),
    "l2": lambda w, g: w.pow(2).sum(1).sqrt(),
    "taylor": lambda w, g: (w * g).sum(1).abs(),  # Taylor expansion on the whole filter
    "random": lambda w, g: torch.rand(w.shape[0]),
}
NEEDS_GRADIENTS = {"taylor"}


def weight_scores(module: nn.Module, criterion: str, grads: dict | None = None) -> torch.Tensor:
    """Per-weight scores for unstructured pruning."""
    if criterion not in WEIGHT_CRITERIA:
        raise ValueError(f"criterion {criterion!r} scores channels, not single weights")
    grad = grads[module] if criterion in NEEDS_GRADIENTS else None
    return WEIGHT_CRITERIA[criterion](module.weight.detach(), grad)


def channel_scores(module: nn.Module, criterion: str, grads: dict | None = None) -> torch.Tensor:
    """Per-output-channel scores of a Conv2d/Linear producer."""
    if criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"criterion {criterion!r} needs activations or BatchNorm, not weights")
    grad = _rows(grads[module]) if criterion in NEEDS_GRADIENTS else None
    return CHANNEL_CRITERIA[criterion](_rows(module.weight), grad)


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


@torch.no_grad()
def input_norms(model: nn.Module, modules: list[nn.Module], batches) -> dict[nn.Module, torch.Tensor]:
    """The L2 norm of each input feature of each module over calibration batches (every token of
    a sequence): the activation half of Wanda's |w| x ||x||, one pass for all modules."""
    sums = {m: torch.zeros(m.in_features, dtype=torch.float64) for m in modules}

    def record(m, args, _out):
        x = args[0].detach()
        sums[m] += x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)

    hooks = [m.register_forward_hook(record) for m in modules]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {m: s.sqrt().float() for m, s in sums.items()}
