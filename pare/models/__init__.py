"""Where models come from: the zoo by name, or a user's factory ``package.module:function``."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import typing
from pathlib import Path

import torch
import torch.nn as nn

from pare.config import did_you_mean
from pare.errors import UnsupportedModelError
from pare.models.trust import refuse_unsafe
from pare.models.zoo import ARG_RANGES, ZOO

DEFAULT_MAX_PARAMS = 1_000_000_000
TRAIN_BYTES_PER_PARAM = 16  # fp32 weights, gradients and Adam's two moments


def zoo_options(name: str) -> list[str]:
    params = list(inspect.signature(ZOO[name].__init__).parameters)
    return [p for p in params if p not in ("self", "input_shape", "num_classes")]


def _zoo_arg_problems(name: str, args: dict) -> list[str]:
    opts = zoo_options(name)
    hints = typing.get_type_hints(ZOO[name].__init__)
    problems = []
    for key, value in args.items():
        where = f"model.args.{key}"
        if key not in opts:
            problems.append(
                f"{where}: {name!r} has no option {key!r}{did_you_mean(key, opts)}; options: {', '.join(opts)}"
            )
            continue
        if hints.get(key) is bool:
            if not isinstance(value, bool):
                problems.append(f"{where}: expected true or false, got {value!r}")
            continue
        wants_int = hints.get(key) is int
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (wants_int and not isinstance(value, int)):
            problems.append(
                f"{where}: expected {'a whole number' if wants_int else 'a number'}, got {value!r}"
            )
            continue
        low, high = ARG_RANGES.get(key, (None, None))
        if low is not None and not low <= value <= high:
            problems.append(f"{where}: {value!r} is out of range for {name!r}; use {low} to {high}")
    return problems


def check_model_config(cfg) -> list[str]:
    """Problems a recipe's ``model`` section has before anything is built (for ``pare validate``)."""
    if getattr(cfg, "hf", None) is not None or getattr(cfg, "gguf", None) is not None:
        from pare.models.hf import source

        try:
            source(cfg)
        except UnsupportedModelError as e:
            return [str(e)]
        return []
    if cfg.name is not None:
        if cfg.name not in ZOO:
            return [
                f"model.name: {cfg.name!r} is not a zoo model{did_you_mean(cfg.name, ZOO)}; zoo: {', '.join(ZOO)}"
            ]
        return _zoo_arg_problems(cfg.name, cfg.args)
    try:
        resolve_factory(cfg.factory)
    except UnsupportedModelError as e:
        return [f"model.factory: {e}"]
    return []


_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def resolve_factory(spec: str):
    """The function or ``nn.Module`` class ``'package.module:name'`` names (importing the module,
    as ``pare run`` will); built-in callables such as ``os:system`` are refused."""
    if not isinstance(spec, str) or not _FACTORY.fullmatch(spec):
        raise UnsupportedModelError(f"{spec!r} is not of the form 'package.module:function'")
    module_name, _, attr = spec.partition(":")
    refuse_unsafe(module_name, f"factory {spec!r}")
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
    is_module_class = inspect.isclass(fn) and issubclass(fn, nn.Module)
    if not (inspect.isfunction(fn) or is_module_class):
        raise UnsupportedModelError(
            f"{spec!r} is a {type(fn).__name__}, not a model factory; name a Python function that "
            f"returns a torch.nn.Module, or an nn.Module class"
        )
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
    pretrained = getattr(cfg, "hf", None) is not None or getattr(cfg, "gguf", None) is not None
    if pretrained:  # model sections of other configs (distill's student) have neither
        from pare.models.hf import (
            CausalLM,
            TextClassifier,
            TextEncoder,
            load_hf,
            model_label,
            pretrained_params,
            source,
        )

        label = model_label(cfg)
        _check_size(pretrained_params(*source(cfg)), getattr(cfg, "max_params", None), label)
        backbone = load_hf(*source(cfg), tokenizer)
        pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        if kind == "language_model":
            model = CausalLM(backbone)
        elif kind == "retrieval":
            model = TextEncoder(backbone, pad)
        else:
            model = TextClassifier(backbone, num_classes, pad)
    elif cfg.name is not None:
        label = f"zoo model {cfg.name!r}"
        _check_size(_zoo_probe(cfg, input_shape, num_classes), getattr(cfg, "max_params", None), label)
        model = ZOO[cfg.name](input_shape, num_classes, **cfg.args)
    else:
        fn = resolve_factory(cfg.factory)
        kwargs = dict(cfg.args)
        accepted = inspect.signature(fn).parameters  # resolve_factory: a Python function or class
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
    if cfg.name is None and not pretrained:  # zoo and pretrained models were counted before building
        _check_size(sum(p.numel() for p in model.parameters()), getattr(cfg, "max_params", None), label)
    if cfg.weights:
        load_weights(model, cfg.weights)
    text = pretrained or kind == "language_model"  # token ids in
    # a pretrained LM's logits cover its own vocabulary, which may exceed the tokenizer's
    classes = None if kind == "retrieval" or (pretrained and kind == "language_model") else num_classes
    check_output(model, input_shape, classes, label, text=text, kind=kind)
    return model


def _zoo_probe(cfg, input_shape, num_classes) -> int:
    """Parameters of the zoo model, counted on the meta device (no memory, no random numbers)."""
    try:
        with torch.device("meta"):
            probe = ZOO[cfg.name](input_shape, num_classes, **cfg.args)
    except UnsupportedModelError:
        raise
    except Exception as e:  # heads that do not divide dim, sizes that overflow
        raise UnsupportedModelError(
            f"zoo model {cfg.name!r} cannot be built with args {dict(cfg.args)} for input {tuple(input_shape)}: "
            f"{type(e).__name__}: {e}"
        ) from None
    return sum(p.numel() for p in probe.parameters())


def _check_size(params: int, max_params: int | None, label: str) -> None:
    """Refuse a model too large to train here before any memory is taken."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = max_params or min(DEFAULT_MAX_PARAMS, ram // TRAIN_BYTES_PER_PARAM)
    if params > limit:
        need = params * TRAIN_BYTES_PER_PARAM / 2**30
        raise UnsupportedModelError(
            f"{label} has {params:,} parameters (training needs about {need:,.1f} GiB; this machine has "
            f"{ram / 2**30:,.1f} GiB), over the limit of {limit:,}; make it smaller (model.args; or a smaller pretrained model), or set "
            f"model.max_params above {params:,} to build it anyway"
        )


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
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UnsupportedModelError(f"{p}: expected a state dict of named tensors; it holds other objects")
    model_state = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)}, model {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if k in model_state and v.shape != model_state[k].shape
    ]
    if wrong:
        raise UnsupportedModelError(
            f"{p}: {len(wrong)} tensor(s) have the wrong shape for this model ({'; '.join(wrong[:3])}); "
            f"were the weights saved from a model built with the same model.args?"
        )
    result = model.load_state_dict(state, strict=False)
    mismatched = list(result.missing_keys) + list(result.unexpected_keys)
    if mismatched:
        raise UnsupportedModelError(
            f"{p}: weights do not fit the model: missing {list(result.missing_keys)[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def check_output(
    model: nn.Module,
    input_shape,
    num_classes: int | None,
    label: str,
    text: bool = False,
    kind: str = "classification",
) -> None:
    """``num_classes`` None: any (2, D) output (an embedding) is right. A language model must
    give next-token logits for every position, (2, T, vocab)."""
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
    elif kind == "language_model":
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(
            f"{label} returns {shape} for a batch of 2 token sequences; a language-model data source needs "
            f"next-token logits (2, {input_shape[0]}, {num_classes}): use a causal model such as 'gpt'"
        )
    ok = isinstance(out, torch.Tensor) and out.dim() == 2 and len(out) == 2
    if not ok or (num_classes is not None and out.shape[1] != num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        expected = f"logits of shape (2, {num_classes})" if num_classes is not None else "embeddings (2, D)"
        raise UnsupportedModelError(f"{label} returns {shape} for a batch of 2; expected {expected}")


__all__ = ["ZOO", "build_model", "load_weights", "check_model_config", "zoo_options"]
