"""The model zoo: small, readable classifiers with width/depth knobs.

Every builder takes ``input_shape`` (without the batch) and ``num_classes`` first, then its own
keyword options. Images arrive as (C, H, W), tabular rows as (D,).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.errors import UnsupportedModelError
from pare.models.efficientnet import EfficientNetLite0


def _need_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UnsupportedModelError(
            f"model {name!r} needs images (channels, height, width) but the data gives shape "
            f"{tuple(input_shape)}; use 'mlp' or 'transformer' for tabular data"
        )
    return input_shape  # type: ignore[return-value]


class MLP(nn.Module):
    def __init__(self, input_shape, num_classes, width: int = 128, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers, d_in = [nn.Flatten()], math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout)]
            d_in = width
        layers.append(nn.Linear(d_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class CNN(nn.Module):
    """conv-BN-ReLU blocks, widening x2 and halving the resolution after each, global pooling, linear."""

    def __init__(
        self,
        input_shape,
        num_classes,
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        c, h, w = _need_image("cnn", input_shape)
        blocks, c_in = [], c
        for i in range(depth):
            c_out = width * 2**i
            blocks.append(conv_bn(c_in, c_out, kernel_size))
            if min(h, w) >= 2:  # stop pooling once the map is 1 pixel wide
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a skip connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, ``stages`` groups of ``depth`` residual blocks (each group doubles the width and
    halves the resolution after the first), global pooling and a linear head."""

    def __init__(self, input_shape, num_classes, width: int = 16, depth: int = 2, stages: int = 3):
        super().__init__()
        c, h, w = _need_image("resnet", input_shape)
        self.stem = conv_bn(c, width, 3)
        blocks, c_in = [], width
        for s in range(stages):
            c_out = width * 2**s
            for b in range(depth):
                stride = 2 if (s > 0 and b == 0 and min(h, w) >= 2) else 1
                if stride == 2:
                    h, w = (h + 1) // 2, (w + 1) // 2
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (not fused), so FLOP counters see every matmul."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise UnsupportedModelError(f"transformer: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.causal = causal  # a token attends only to itself and earlier tokens (language models)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, _ = x.shape
        qkv = self.qkv(x)
        inner = qkv.shape[-1] // 3  # heads x head_dim: fewer heads once some are pruned
        q, k, v = qkv.split(inner, dim=2)
        # (B, T, inner) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, heads, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(future, float("-inf"))
        att = self.drop(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, inner)
        return self.proj(y)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, causal: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """Encoder classifier. Images are cut into ``patch_size`` patches; tabular rows become one
    token per feature (value times a learned per-feature embedding). Mean-pooled tokens feed the head."""

    def __init__(
        self,
        input_shape,
        num_classes,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) == 3:
            c, h, w = input_shape
            if h % patch_size or w % patch_size:
                raise UnsupportedModelError(
                    f"transformer: image {h}x{w} is not divisible by patch_size={patch_size}; "
                    f"choose a patch size that divides both"
                )
            self.embed = nn.Conv2d(c, dim, patch_size, stride=patch_size)
            tokens = (h // patch_size) * (w // patch_size)
        elif len(input_shape) == 1:
            tokens = input_shape[0]
            self.embed = None
            self.feature_embed = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        else:
            raise UnsupportedModelError(f"transformer: unsupported input shape {tuple(input_shape)}")
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x).flatten(2).transpose(1, 2)  # (B, C, H', W') -> (B, T, dim)
        else:
            x = x.unsqueeze(-1) * self.feature_embed  # (B, D) -> (B, D, dim)
        x = self.blocks(x + self.pos)
        return self.head(self.ln(x).mean(dim=1))


class GPT(nn.Module):
    """A small decoder-only language model: token and learned position embeddings, causal
    pre-norm blocks, a final LayerNorm and an untied output layer. Token ids (B, T) -> next-token
    logits (B, T, vocab); ``num_classes`` is the vocabulary size."""

    def __init__(
        self,
        input_shape,
        num_classes,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) != 1:
            raise UnsupportedModelError(
                f"gpt: takes token ids (sequence length,), got input shape {tuple(input_shape)}"
            )
        self.tokens = nn.Embedding(num_classes, dim)
        self.pos = nn.Parameter(torch.zeros(1, input_shape[0], dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(
            *[EncoderBlock(dim, heads, mlp_ratio, dropout, causal=True) for _ in range(depth)]
        )
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        x = self.tokens(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.ln(self.blocks(x)))


ZOO = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "transformer": Transformer,
    "gpt": GPT,
    "efficientnet_lite0": EfficientNetLite0,  # ImageNet-pretrained (pretrained: true)
}

# Ranges of the zoo's options (inclusive; dropout below 1): what ``pare validate`` accepts.
# Combinations that are in range but too large (cnn depth 12 doubles the width 12 times) are
# caught by the parameter count (``build_model``), not here.
ARG_RANGES = {
    "width": (1, 16384),
    "dim": (1, 16384),
    "depth": (0, 256),
    "stages": (1, 8),
    "heads": (1, 256),
    "kernel_size": (1, 31),
    "patch_size": (1, 1024),
    "mlp_ratio": (1, 64),
    "dropout": (0.0, 0.999),
}
