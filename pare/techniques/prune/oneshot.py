"""One-shot pruning from calibration data: Wanda and SparseGPT, layer by layer.

Both run on the engine GPTQ uses (``pare.training.blockwise.layer_by_layer``): each Linear
layer is pruned from its inputs in the model with every earlier layer already pruned, one
decoder block at a time, and the statistics are GPTQ's (``pare.training.calibration``: X^T X over the
calibration tokens).

- Wanda (Sun et al. 2023) scores each weight by |W_ij| * ||X_j||, the weight times the norm of
  its input over the calibration tokens (sqrt of X^T X's diagonal), and removes the lowest in
  each output row (each group of M inputs for N:M). No weight changes value.
- SparseGPT (Frantar & Alistarh 2023) walks the input columns in blocks of 128 with the
  Cholesky factor of H^-1 (H = X^T X, damped): in each block it chooses the weights whose
  removal costs least (w^2 / [H^-1]_jj^2; for N:M within every M inputs), zeroes them and
  spreads each column's error over the columns not yet visited, as GPTQ does with rounding
  error. The kept weights change to make up for the removed ones.

``reconstruction_error`` is what both minimise, measured on the layer: the relative output
error tr(dW H dW^T) / tr(W H W^T) on the calibration inputs.
"""

from __future__ import annotations

import torch

from pare.training.blockwise import layer_by_layer
from pare.training.calibration import InputStats, group_stats, inverse_hessian_factor


def _row_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True where a weight is removed: the ``k`` lowest scores of every row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return mask


def _n_m_masks(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where a weight is removed: in every M consecutive inputs of a row, all but the N
    highest scores."""
    groups = scores.reshape(scores.shape[0], -1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(m - n, dim=2, largest=False).indices, True)
    return mask.reshape(scores.shape)


def removal_mask(scores: torch.Tensor, amount: float, n_m: tuple[int, int] | None) -> torch.Tensor:
    return _n_m_masks(scores, *n_m) if n_m else _row_masks(scores, int(amount * scores.shape[1]))


def magnitude(w: torch.Tensor, amount: float, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    """The weight with its smallest-magnitude weights (per row, or per M inputs) zeroed."""
    w = w.detach()
    return w.masked_fill(removal_mask(w.abs().float(), amount, n_m), 0)


def wanda(
    w: torch.Tensor, stats: InputStats, amount: float, n_m: tuple[int, int] | None = None
) -> torch.Tensor:
    """The weight with its lowest |W| * ||X_j|| weights (per row, or per M inputs) zeroed."""
    w = w.detach()
    norms = stats.xtx.diagonal().sqrt().float()
    return w.masked_fill(removal_mask(w.abs().float() * norms[None, :], amount, n_m), 0)


def sparsegpt(
    w: torch.Tensor,
    h: torch.Tensor,
    amount: float,
    n_m: tuple[int, int] | None = None,
    *,
    damp: float = 0.01,
    block: int = 128,
    name: str = "",
) -> torch.Tensor:
    """SparseGPT of one Linear weight (out, in) given its input Hessian H = X^T X / rows (in, in):
    the pruned weight, the kept weights updated. Unstructured: ``amount`` of every row's weights
    is removed, chosen block by block; N:M: M - N of every M inputs."""
    if n_m and block % n_m[1]:
        raise ValueError(f"block {block} is not a multiple of m={n_m[1]}")
    dtype = w.dtype
    wt = w.detach().double().T.contiguous()  # input columns as rows: contiguous on CPU
    h = h.double().clone()
    dead = h.diagonal() == 0  # inputs that never fire: their weights do nothing, remove them
    h[dead, dead] = 1
    wt[dead] = 0
    hinv = inverse_hessian_factor(h, damp, name, "SparseGPT")
    del h
    n = wt.shape[0]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, hinv1 = wt[i1:i2], hinv[i1:i2, i1:i2]
        d = hinv1.diagonal()
        err1 = torch.empty_like(w1)
        removed = None
        if not n_m:  # the block's choice made at once, from the weights as they are now; the
            # counts per block rounded so that every row loses exactly int(amount * in) weights
            k = int(amount * i2) - int(amount * i1)
            removed = _row_masks((w1**2 / d[:, None] ** 2).T, k).T
        for i in range(i2 - i1):
            if n_m and i % n_m[1] == 0:  # each group of M chosen when the walk reaches it
                j = slice(i, i + n_m[1])
                group = (w1[j] ** 2 / d[j, None] ** 2).T
                removed = torch.zeros_like(w1, dtype=torch.bool)
                removed[j] = _n_m_masks(group, *n_m).T
            col = w1[i]
            pruned = col.masked_fill(removed[i], 0)
            err = (col - pruned).div_(d[i])
            w1[i:].addr_(hinv1[i, i:], err, alpha=-1)  # spread the error over later columns
            w1[i] = pruned
            err1[i] = err
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    return wt.T.to(dtype).contiguous()


def reconstruction_error(w: torch.Tensor, pruned: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error of the pruned layer on its calibration inputs:
    tr(dW H dW^T) / tr(W H W^T), with H = X^T X."""
    w, pruned = w.detach(), pruned.detach()
    w, dw, h = w.double(), (w - pruned).double(), h.double()
    return float(((dw @ h) * dw).sum() / ((w @ h) * w).sum().clamp(min=1e-30))


def prune_layers(model, layers: dict, batches, criterion: str, amount: float, n_m, damp: float) -> dict:
    """Prune the Linear ``layers`` (name -> module) of ``model`` in place with ``criterion``
    (``wanda`` or ``sparsegpt``), in the order the model runs them, each from its inputs with
    the layers before it already pruned. Returns each layer's reconstruction error, and
    magnitude pruning's on the same inputs for comparison."""
    errors = {}
    for group, feed in layer_by_layer(model, list(layers), batches):
        mods = {n: layers[n] for n in group}
        for name, st in group_stats(feed, mods).items():
            w = mods[name].weight
            if criterion == "wanda":
                pruned = wanda(w, st, amount, n_m)
            else:
                pruned = sparsegpt(w, st.hessian, amount, n_m, damp=damp, name=name)
            errors[name] = {
                criterion: reconstruction_error(w, pruned, st.hessian),
                "magnitude": reconstruction_error(w, magnitude(w, amount, n_m), st.hessian),
            }
            with torch.no_grad():
                w.copy_(pruned)
    return errors
