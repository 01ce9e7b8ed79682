"""Low-rank factorizations of single layers, their inverse, and rank choices.

Every factorized layer is a ``Factorized`` sequence of ordinary Linear/Conv2d layers, so the
rest of pare (FLOP counting, ONNX export, pruning, quantization) sees nothing new. At full
rank each factorization reproduces the layer exactly (up to float rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class Factorized(nn.Sequential):
    """Thin layers replacing one layer; ``kind`` is svd, spatial or tucker2."""

    def __init__(self, kind: str, *layers: nn.Module):
        super().__init__(*layers)
        self.kind = kind

    def merged(self) -> nn.Module:
        """The single layer the factors compute (see ``pare.graph.merge``)."""
        return merge(self)


def _svd(matrix: torch.Tensor):
    return torch.linalg.svd(matrix.double(), full_matrices=False)


def energy_rank(singular: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` of the squared total."""
    share = torch.cumsum(singular**2, 0) / (singular**2).sum().clamp(min=1e-30)
    return int((share < energy - 1e-12).sum()) + 1


def singular_values(layer: nn.Module, kind: str) -> list[torch.Tensor]:
    """One spectrum per rank to choose (two for Tucker-2: input and output channels)."""
    w = layer.weight.detach()
    if kind == "svd":
        return [_svd(w.reshape(w.shape[0], -1))[1]]
    if kind == "spatial":
        return [_svd(_spatial_matrix(w))[1]]
    return [_svd(_unfold(w, 1))[1], _svd(_unfold(w, 0))[1]]  # (input, output)


def max_ranks(layer: nn.Module, kind: str) -> list[int]:
    w = layer.weight
    if kind == "svd":
        return [min(w.shape[0], math.prod(w.shape[1:]))]
    if kind == "spatial":
        o, i, kh, kw = w.shape
        return [min(i * kh, o * kw)]
    return [w.shape[1], w.shape[0]]


def factorized_params(layer: nn.Module, kind: str, ranks: list[int]) -> int:
    """Weights of the factorized layer (biases are unchanged and left out)."""
    w = layer.weight
    if kind == "svd":
        return ranks[0] * (w.shape[0] + math.prod(w.shape[1:]))
    o, i, kh, kw = w.shape
    if kind == "spatial":
        return ranks[0] * (i * kh + o * kw)
    r_in, r_out = ranks
    return i * r_in + r_in * r_out * kh * kw + r_out * o


def factorize(layer: nn.Module, kind: str, ranks: list[int]) -> Factorized:
    with torch.no_grad():
        if kind == "svd":
            return _svd_layer(layer, ranks[0])
        if kind == "spatial":
            return _spatial(layer, ranks[0])
        return _tucker2(layer, *ranks)


def _svd_layer(layer: nn.Linear, rank: int) -> Factorized:
    u, s, vh = _svd(layer.weight.detach())
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.copy_(root[:, None] * vh[:rank])
    second.weight.copy_(u[:, :rank] * root[None, :])
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return Factorized("svd", first, second)


def _spatial_matrix(w: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) -> (in*kh, out*kw): a rank-r split gives a kh x 1 then a 1 x kw conv."""
    o, i, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def _spatial(layer: nn.Conv2d, rank: int) -> Factorized:
    """Spatial SVD (Jaderberg et al. 2014): a k x k conv as a vertical then a horizontal one."""
    o, i, kh, kw = layer.weight.shape
    u, s, vh = _svd(_spatial_matrix(layer.weight.detach()))
    root = s[:rank].sqrt()
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    first = nn.Conv2d(i, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
    second = nn.Conv2d(
        rank, o, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=layer.bias is not None
    )
    # u: (i*kh, r) -> (r, i, kh, 1); vh: (r, o*kw) -> (o, r, 1, kw)
    first.weight.copy_((u[:, :rank] * root).T.reshape(rank, i, kh, 1))
    second.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, o, kw).permute(1, 0, 2).unsqueeze(2))
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return Factorized("spatial", first, second)


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def _tucker2(layer: nn.Conv2d, r_in: int, r_out: int) -> Factorized:
    """Tucker-2 (Kim et al. 2016) by truncated HOSVD: 1x1 conv to r_in channels, the k x k core
    from r_in to r_out channels, 1x1 conv to the output channels."""
    w = layer.weight.detach().double()
    o, i, kh, kw = w.shape
    u_in = _svd(_unfold(w, 1))[0][:, :r_in]  # (i, r_in)
    u_out = _svd(_unfold(w, 0))[0][:, :r_out]  # (o, r_out)
    core = torch.einsum("oihw,ia,ob->bahw", w, u_in, u_out)  # (r_out, r_in, kh, kw)
    first = nn.Conv2d(i, r_in, 1, bias=False)
    middle = nn.Conv2d(
        r_in, r_out, (kh, kw), stride=layer.stride, padding=layer.padding, dilation=layer.dilation, bias=False
    )
    last = nn.Conv2d(r_out, o, 1, bias=layer.bias is not None)
    first.weight.copy_(u_in.T.reshape(r_in, i, 1, 1))
    middle.weight.copy_(core)
    last.weight.copy_(u_out.reshape(o, r_out, 1, 1))
    if layer.bias is not None:
        last.bias.copy_(layer.bias)
    return Factorized("tucker2", first, middle, last)


@torch.no_grad()
def merge(f: Factorized) -> nn.Module:
    """The single layer a factorization computes (the product of its factors)."""
    if f.kind == "svd":
        first, second = f
        layer = nn.Linear(first.in_features, second.out_features, bias=second.bias is not None)
        layer.weight.copy_(second.weight @ first.weight)
    elif f.kind == "spatial":
        first, second = f
        kh, kw = first.kernel_size[0], second.kernel_size[1]
        layer = nn.Conv2d(
            first.in_channels,
            second.out_channels,
            (kh, kw),
            stride=(first.stride[0], second.stride[1]),
            padding=(first.padding[0], second.padding[1]),
            dilation=(first.dilation[0], second.dilation[1]),
            bias=second.bias is not None,
        )
        layer.weight.copy_(torch.einsum("rih,orw->oihw", first.weight[..., 0], second.weight[:, :, 0]))
    else:
        first, middle, last = f
        layer = nn.Conv2d(
            first.in_channels,
            last.out_channels,
            middle.kernel_size,
            stride=middle.stride,
            padding=middle.padding,
            dilation=middle.dilation,
            bias=last.bias is not None,
        )
        w = torch.einsum("ai,bahw,ob->oihw", first.weight[:, :, 0, 0], middle.weight, last.weight[:, :, 0, 0])
        layer.weight.copy_(w)
    if f[-1].bias is not None:
        layer.bias.copy_(f[-1].bias)
    return layer
