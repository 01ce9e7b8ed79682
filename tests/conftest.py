"""Shared fixtures, and a test-only technique that proves the stage interface end to end."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pare.config import param
from pare.registry import register, unregister
from pare.training import Hook


@dataclass
class ZeroSmallestConfig:
    """Zero the given fraction of smallest-magnitude weights, then optionally fine-tune."""

    fraction: float = param(0.5, gt=0, lt=1)
    finetune_epochs: int = param(0, ge=0)


class KeepZeros(Hook):
    """Re-apply the mask after each optimizer step so fine-tuning cannot revive zeroed weights."""

    def __init__(self, masks):
        self.masks = masks
        self.steps = 0

    def after_step(self, state):
        self.steps += 1
        with torch.no_grad():
            for p, m in self.masks:
                p.mul_(m)


APPLY_CALLS: list[str] = []


def zero_smallest(model, config, ctx):
    APPLY_CALLS.append(ctx.name)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    scores = torch.cat([p.detach().abs().flatten() for p in weights])
    threshold = scores.kthvalue(max(1, int(config.fraction * len(scores)))).values
    masks = [(p, (p.detach().abs() > threshold).float()) for p in weights]
    with torch.no_grad():
        for p, m in masks:
            p.mul_(m)
    info = {"threshold": float(threshold), "zeroed": int(sum((m == 0).sum() for _, m in masks))}
    if config.finetune_epochs:
        hook = KeepZeros(masks)
        info["history"] = ctx.fit(model, hooks=[hook], epochs=config.finetune_epochs, lr=1e-3)
        info["hook_steps"] = hook.steps
    return model, info


@dataclass
class ShipOnnxConfig:
    """Change nothing; ship the model as an ONNX file run by ONNX Runtime."""


def ship_onnx_export(model, config, info, stage_dir, example):
    from pare.export import export_onnx

    export_onnx(model, example, stage_dir / "shipped.onnx")
    return {"artifact": stage_dir / "shipped.onnx", "runtime": "onnxruntime"}


@pytest.fixture(autouse=True, scope="session")
def test_technique():
    register("zero_smallest", ZeroSmallestConfig)(zero_smallest)
    register("ship_onnx", ShipOnnxConfig, export=ship_onnx_export)(lambda model, config, ctx: (model, {}))
    yield
    unregister("zero_smallest")
    unregister("ship_onnx")


@pytest.fixture
def fast_recipe():
    """A recipe dict that trains and measures quickly (tests change what they need)."""

    def make(**sections):
        recipe = {
            "name": "test",
            "seed": 0,
            "data": {"source": "digits"},
            "model": {"name": "mlp", "args": {"width": 32, "depth": 1}},
            "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "patience": None},
            "evaluate": {"bootstrap": 200, "latency_repeats": 5, "latency_batch": 16, "onnx": False},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(recipe.get(key), dict):
                recipe[key] = {**recipe[key], **value}
            else:
                recipe[key] = value
        return recipe

    return make


@pytest.fixture(scope="session")
def digits_split():
    from pare.data import load_builtin, split_dataset

    return split_dataset(load_builtin("digits"), val=0.15, test=0.2, seed=0, standardize=True)


# The benchmark smoke runs, longest first as measured on one thread (make test's workers). They
# are handed out first, so that the two workers finish together instead of one running the
# longest alone at the end; a new benchmark goes first until it is placed here.
SMOKE_RUN_ORDER = [
    "llm_pruning",
    "llm",
    "transformers",
    "vision",
    "quantization",
    "pruning",
    "memory",
    "distillation",
]


def pytest_collection_modifyitems(config, items):
    def rank(item):
        if item.get_closest_marker("bench") is None:
            return len(SMOKE_RUN_ORDER)
        name = item.callspec.params.get("name", "") if hasattr(item, "callspec") else ""
        return SMOKE_RUN_ORDER.index(name) if name in SMOKE_RUN_ORDER else -1

    items.sort(key=rank)  # stable: every other test keeps its order
