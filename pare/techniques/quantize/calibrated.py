"""Weight-only quantization that looks at calibration inputs: GPTQ and AWQ.

Both produce weights in the same format as round-to-nearest (``affine``, symmetric or with a
zero point, one scale per group of ``group_size`` inputs or per channel), so packing, loading
and the report are shared; AWQ adds one scale per input channel (``input_scale``) that the
weight is divided by.

- GPTQ (Frantar et al. 2022): quantize one input column at a time and spread its rounding
  error over the columns not yet quantized, weighted by the inverse Hessian H = X^T X of the
  layer's inputs (taken layer after layer from the model quantized so far: sequential).
  Damping adds ``damp`` x mean(diag H) to the diagonal; when H is still not positive definite
  the damping grows tenfold (three tries) before a clear error. With
  ``act_order`` columns go in order of decreasing diag(H); group scales (and zero points) are
  fixed from the original weights first ("static groups"), so the result packs like RTN.
  Sequential inputs X differ from the float model's X_ref; with the drift X^T (X_ref - X) the
  layer aims at the float output X_ref W^T, not X W^T (the asymmetric calibration of GPTAQ,
  2025): on the zoo GPT at 3 bits (512 calibration windows) this cut GPTQ's perplexity
  increase by a third (min-max scales) to three fifths (clipped scales). How many calibration
  tokens GPTQ sees matters as much there: see the README's transformers benchmark.
- AWQ (Lin et al. 2023): scale input channel j by s_j = mean|x_j|^a before quantizing (and
  divide it back), choosing a in [0, 1] per layer by the output error on calibration rows:
  salient channels get finer steps.
"""

from __future__ import annotations

import torch

from pare.formats.schemes import QuantizedWeight, WeightSpec, qrange, quantize_weight
from pare.training.calibration import InputStats, inverse_hessian_factor


def _group_params(w: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-group (or per-channel) scales and zero points of ``w`` as RTN computes them, and the
    group width."""
    ref = quantize_weight(w, spec)
    width = spec.group_size if spec.granularity == "per_group" else w.shape[1]
    shape = (w.shape[0], -1)
    return ref.params["scale"].reshape(shape), ref.params["zero_point"].reshape(shape), width


def gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    spec: WeightSpec,
    *,
    damp=0.01,
    act_order=True,
    block=128,
    name="",
    drift: torch.Tensor | None = None,
) -> QuantizedWeight:
    """GPTQ of one Linear weight (out, in) given its input Hessian H = X^T X (in, in). With
    ``drift`` = X^T (X_ref - X), the target is the float model's output X_ref W^T rather than
    X W^T: its least-squares fit on X, W + W drift^T H^-1, is what gets quantized (both damped).
    Weights that are exactly zero (an earlier pruning stage's) stay zero: their code is the zero
    point and their rounding error is spread like any other, so sparsity + GPTQ compose (as
    SparseGPT's joint pruning and quantization does) instead of the updates filling the zeros."""
    w = w.detach().double().clone()
    pruned = w == 0
    h = h.double().clone()
    if drift is not None:
        eye = torch.eye(len(h), dtype=h.dtype)
        damped = h + damp * h.diagonal().mean().clamp(min=1e-12) * eye
        w = w + torch.linalg.solve(damped, drift.double() @ w.T).T
    scales, zeros, width = _group_params(w.float(), spec)
    scales, zeros = scales.double(), zeros.double()
    qmin, qmax = qrange(spec.bits, spec.symmetric, spec.full_range)
    dead = h.diagonal() == 0  # inputs that never fire: any value works, use zero
    h[dead, dead] = 1
    w[:, dead] = 0
    n = w.shape[1]
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(n)
    w, h = w[:, perm], h[perm[:, None], perm]  # one (in, in) copy, not two
    col_scale = scales[:, perm // width]  # each column keeps its original group's scale
    col_zero = zeros[:, perm // width]
    hinv = inverse_hessian_factor(h, damp, name, "GPTQ")
    # the loop walks input columns: held as rows (W^T) they are contiguous, 2.4x faster on CPU
    wt, col_scale, col_zero = w.T.contiguous(), col_scale.T.contiguous(), col_zero.T.contiguous()
    sparse = pruned[:, perm].T.contiguous() if pruned.any() else None
    codes = torch.empty_like(wt)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, err1, hinv1 = wt[i1:i2], torch.empty_like(wt[i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, s, z = w1[i], col_scale[i1 + i], col_zero[i1 + i]
            q = (col / s).round_().add_(z).clamp_(qmin, qmax)
            if sparse is not None:
                q = torch.where(sparse[i1 + i], z, q)
            codes[i1 + i] = q
            err = (col - (q - z) * s).div_(hinv1[i, i])
            w1[i:].addr_(hinv1[i, i:], err, alpha=-1)  # spread the error over later columns, in place
            err1[i] = err
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    codes = codes.T
    inverse = torch.argsort(perm)
    codes = codes[:, inverse]
    expand = lambda t: t.repeat_interleave(width, dim=1)  # noqa: E731
    deq = ((codes - expand(zeros)) * expand(scales)).float()
    return QuantizedWeight(
        deq,
        codes.to(torch.int32),
        {"scale": scales.reshape(-1).float(), "zero_point": zeros.reshape(-1).float()},
        spec.bits,
    )


def awq(w: torch.Tensor, stats: InputStats, spec: WeightSpec, grid: int = 20) -> QuantizedWeight:
    """Activation-aware scaling searched on a grid of exponents; the weight is divided back."""
    w = w.detach().float()
    x = torch.cat(stats.sample)
    ref = x @ w.T
    mean_abs = stats.mean_abs.clamp(min=1e-8)
    best, best_err = None, float("inf")
    for k in range(grid + 1):
        a = k / grid
        s = mean_abs**a
        s = s / (s.max() * s.min()).sqrt()  # centred, so a = 0 is plain RTN
        q = quantize_weight(w * s[None, :], spec)
        err = float(((x @ (q.dequantized / s[None, :]).T) - ref).pow(2).mean())
        if err < best_err:
            best, best_err = (q, s), err
    q, s = best
    return QuantizedWeight(q.dequantized / s[None, :], q.codes, {**q.params, "input_scale": s}, spec.bits)
