"""Where models come from: the zoo by name, or a user's factory ``package.module:function``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

from pare.config import did_you_mean
from pare.errors import UnsupportedModelError
from pare.models.zoo import ZOO


def zoo_options(name: str) -> list[str]:
    params = list(inspect.signature(ZOO[name].__init__).parameters)
    return [p for p in params if p not in ("self", "input_shape", "num_classes")]


def check_model_config(cfg) -> list[str]:
    """Problems a recipe's ``model`` section has before anything is built (for ``pare validate``)."""
    if getattr(cfg, "hf", None) is not None:
        from pare.models.hf import resolve_hf

        try:
            resolve_hf(cfg.hf)
        except UnsupportedModelError as e:
            return [str(e)]
        return []
    if cfg.name is not None:
        if cfg.name not in ZOO:
            return [
                f"model.name: {cfg.name!r} is not a zoo model{did_you_mean(cfg.name, ZOO)}; zoo: {', '.join(ZOO)}"
            ]
        opts = zoo_options(cfg.name)
        return [
            f"model.args.{k}: {cfg.name!r} has no option {k!r}{did_you_mean(k, opts)}; options: {', '.join(opts)}"
            for k in cfg.args
            if k not in opts
        ]
    try:
        resolve_factory(cfg.factory)
    except UnsupportedModelError as e:
        return [f"model.factory: {e}"]
    return []


def resolve_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UnsupportedModelError(f"{spec!r} is not of the form 'package.module:function'")
    if os.getcwd() not in sys.path:  # like `python -m`: the user's own modules beside the recipe import
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnsupportedModelError(
            f"cannot import {module_name!r} for factory {spec!r} ({e}); is the package installed "
            f"or on PYTHONPATH?"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UnsupportedModelError(f"{module_name!r} has no callable {attr!r}{did_you_mean(attr, names)}")
    return fn


def build_model(
    cfg, input_shape: tuple[int, ...], num_classes: int, kind: str = "classification", tokenizer=None
) -> nn.Module:
    """Build the model a recipe's ``model`` section describes, load its weights if named, and
    check that it maps a batch of inputs to (batch, num_classes) logits (classification) or to
    one embedding per input (retrieval)."""
    problems = check_model_config(cfg)
    if problems:
        raise UnsupportedModelError("; ".join(problems))
    hf = getattr(cfg, "hf", None)  # model sections of other configs (distill's student) have no hf
    if hf is not None:
        from pare.models.hf import TextClassifier, TextEncoder, load_hf

        backbone = load_hf(cfg.hf, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        model = (
            TextEncoder(backbone, pad) if kind == "retrieval" else TextClassifier(backbone, num_classes, pad)
        )
        label = f"Hugging Face model {cfg.hf!r}"
    elif cfg.name is not None:
        model = ZOO[cfg.name](input_shape, num_classes, **cfg.args)
        label = f"zoo model {cfg.name!r}"
    else:
        fn = resolve_factory(cfg.factory)
        kwargs = dict(cfg.args)
        accepted = inspect.signature(fn).parameters
        for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
            if key in accepted:
                kwargs.setdefault(key, value)
        try:
            model = fn(**kwargs)
        except TypeError as e:
            raise UnsupportedModelError(
                f"factory {cfg.factory!r} rejected its arguments {kwargs}: {e}"
            ) from None
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(
                f"factory {cfg.factory!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        label = f"factory {cfg.factory!r}"
    if cfg.weights:
        load_weights(model, cfg.weights)
    text = hf is not None or kind == "language_model"  # token ids in
    check_output(model, input_shape, None if kind == "retrieval" else num_classes, label, text=text)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Safetensors, or a torch checkpoint read with ``weights_only=True`` (no code runs on load)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UnsupportedModelError(f"weights file {str(p)!r} does not exist; check model.weights")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except Exception as e:
        raise UnsupportedModelError(
            f"cannot read weights {str(p)!r} ({type(e).__name__}: {e}); save them with safetensors "
            f"or torch.save(model.state_dict())"
        ) from None
    if not isinstance(state, dict):
        raise UnsupportedModelError(f"{p}: expected a state dict of tensors, got {type(state).__name__}")
    result = model.load_state_dict(state, strict=False)
    mismatched = list(result.missing_keys) + list(result.unexpected_keys)
    if mismatched:
        raise UnsupportedModelError(
            f"{p}: weights do not fit the model: missing {list(result.missing_keys)[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def check_output(
    model: nn.Module, input_shape, num_classes: int | None, label: str, text: bool = False
) -> None:
    """``num_classes`` None: any (2, D) output (an embedding) is right."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, dtype=torch.long if text else torch.float32))
    except Exception as e:
        raise UnsupportedModelError(
            f"{label} fails on a batch of shape {(2, *input_shape)}: {type(e).__name__}: {e}"
        ) from None
    finally:
        model.train(was_training)
    if text and isinstance(out, torch.Tensor) and out.dim() == 3:  # a language model: (2, T, vocab)
        out = out[:, -1]
    ok = isinstance(out, torch.Tensor) and out.dim() == 2 and len(out) == 2
    if not ok or (num_classes is not None and out.shape[1] != num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        expected = f"logits of shape (2, {num_classes})" if num_classes is not None else "embeddings (2, D)"
        raise UnsupportedModelError(f"{label} returns {shape} for a batch of 2; expected {expected}")


__all__ = ["ZOO", "build_model", "load_weights", "check_model_config", "zoo_options"]
