"""Training-memory estimator: a training step simulated on fake tensors, every storage counted.

The model is built and trained for two steps under ``FakeTensorMode``: tensors carry shapes and
dtypes but no data, so nothing is computed or allocated, yet every operator of the real step
runs through torch's dispatcher — autocast, activation checkpointing, LoRA's frozen base,
optimizer state creation and the optimizer's own temporaries included. ``TensorMemoryTracker``
counts the storages that would be alive at each moment; its peak plus the weights and the batch
is the estimate. The components (weights, gradients, optimizer states, activations saved for
backward) are read off the same simulation, and ``measure_training_memory`` runs the identical
step on real CPU tensors so the two can be compared (docs/memory.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from pare.cost.memory import TensorMemoryTracker, state_bytes
from pare.errors import ConfigError, UnsupportedModelError

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSetup:
    """What a training step looks like: batch, optimizer, precision, checkpointing, LoRA."""

    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    precision: Precision = "fp32"  # bf16/fp16: autocast (weights, gradients and states stay fp32)
    checkpointing: bool = False  # recompute each block's activations in backward
    lora_rank: int | None = None  # adapters on every Linear, the rest frozen
    steps: int = 2  # the second step has the optimizer's states in memory


@dataclass
class Workload:
    """A model to build and a batch to feed it: ``build()``, ``batch(n) -> (x, y)``, ``loss``."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    kv_cache: Callable[[int], int] | None = None  # bytes of a K/V cache for ``n`` sequences


def _prepare(model: nn.Module, setup: TrainSetup) -> list[nn.Parameter]:
    if setup.lora_rank:
        from pare.techniques.lora.apply import trainable_parameters, wrap
        from pare.techniques.lora.config import LoRAConfig

        # layers narrower than the rank (a classification head) are trained in full instead
        narrow = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and min(m.in_features, m.out_features) < setup.lora_rank
        ]
        cfg = LoRAConfig(rank=setup.lora_rank, alpha=2.0 * setup.lora_rank, exclude=narrow, trainable=narrow)
        wrap(model, cfg)
        params = trainable_parameters(model, cfg)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if setup.checkpointing:
        enable_checkpointing(model)
    return params


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing: Hugging Face models through their own switch; any other model
    by recomputing each block of its longest ``ModuleList``/``Sequential`` (its layers)."""
    hf = next((m for m in model.modules() if hasattr(m, "gradient_checkpointing_enable")), None)
    if hf is not None:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    containers = [m for m in model.modules() if isinstance(m, nn.ModuleList | nn.Sequential)]
    if not containers:
        raise UnsupportedModelError(
            f"checkpointing: {type(model).__name__} has no ModuleList or Sequential of blocks to recompute"
        )
    blocks = max(containers, key=len)
    for block in blocks:
        block.forward = _checkpointed(block.forward)


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def _optimizer(params, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, lr=1e-3)


class _SavedActivations:
    """Bytes autograd keeps for backward during one forward (each storage once, weights not)."""

    def __init__(self, exclude: set[int]):
        self.seen = set(exclude)
        self.bytes = 0
        self.kept: list[torch.Tensor] = []  # alive until backward, so addresses are not reused

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        if st._cdata not in self.seen:
            self.seen.add(st._cdata)
            self.bytes += st.nbytes()
            self.kept.append(t)
        return t


def _train_steps(workload: Workload, setup: TrainSetup, device: str = "cpu") -> dict:
    """Build, then run ``setup.steps`` training steps; the memory of each part and the peak."""
    model = workload.build()
    params = _prepare(model, setup)
    model.train()
    x, y = workload.batch(setup.batch_size)
    if device != "cpu":  # in place: ``params`` stay the model's parameters
        model.to(device)
        x, y = x.to(device), y.to(device)
    weights = state_bytes(model)
    inputs = x.untyped_storage().nbytes() + y.untyped_storage().nbytes()
    optimizer = _optimizer(params, setup.optimizer)
    autocast = torch.autocast(
        x.device.type, dtype=_DTYPES.get(setup.precision), enabled=setup.precision != "fp32"
    )
    saved = _SavedActivations({p.untyped_storage()._cdata for p in model.parameters()})
    with TensorMemoryTracker() as tracker:
        for step in range(setup.steps):
            hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t)
            with autocast, hooks if step == 0 else contextlib.nullcontext():  # every step saves alike
                loss = workload.loss(model(x), y)
            saved.kept.clear()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            del loss
            grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
            optimizer.step()
    states = sum(
        t.untyped_storage().nbytes()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return {
        "weights": weights,
        "inputs": inputs,
        "gradients": grads,
        "optimizer_states": states,
        "activations": saved.bytes,
        "peak_step": tracker.peak,
        "total": weights + inputs + tracker.peak,
        "trainable_params": sum(p.numel() for p in params),
        "params": sum(p.numel() for p in model.parameters()),
    }


def estimate_training_memory(workload: Workload, setup: TrainSetup, *, kv_cache: bool = False) -> dict:
    """The estimate: ``_train_steps`` simulated on fake tensors (nothing allocated or computed).

    ``total`` = weights + batch + the simulated peak of the training steps; ``workspace`` is what
    the peak holds beyond gradients, optimizer states and saved activations (temporaries of the
    backward pass and the optimizer step; negative when activations are freed before all
    gradients exist). With ``kv_cache`` the K/V cache of inference over the same batch is added
    as its own line (not part of training)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = _train_steps(workload, setup)
    known = out["gradients"] + out["optimizer_states"] + out["activations"]
    out["workspace"] = out["peak_step"] - known
    if kv_cache:
        if workload.kv_cache is None:
            raise ConfigError(
                f"kv_cache: {workload.name} is not a causal language model; it keeps no K/V cache"
            )
        out["kv_cache_inference"] = workload.kv_cache(setup.batch_size)
    return out


def measure_training_memory(workload: Workload, setup: TrainSetup, device: str = "cpu") -> dict:
    """The same steps run for real: tensor bytes counted as they are allocated (CPU), the
    process's resident memory (Linux: peak since a reset of ``VmHWM``), and on CUDA the caching
    allocator's own peak."""
    if device == "cuda":
        return _measure_cuda(workload, setup)
    # one small step first: kernels, thread pools and allocator arenas are set up outside the count
    _train_steps(workload, dataclasses.replace(setup, batch_size=1, steps=1))
    gc.collect()
    rss_before = _reset_peak_rss()
    out = _train_steps(workload, setup)
    out["rss_peak_increase"] = _peak_rss() - rss_before if rss_before is not None else None
    return out


def _measure_cuda(workload: Workload, setup: TrainSetup) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out = _train_steps(workload, setup, device="cuda")
    torch.cuda.synchronize()
    out["cuda_peak"] = torch.cuda.max_memory_allocated() - start
    return out


def _status_kb(field: str) -> int | None:
    path = Path("/proc/self/status")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> int | None:
    """Current resident bytes, after resetting the peak counter (Linux ``clear_refs`` 5)."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_kb("VmRSS")


def _peak_rss() -> int:
    return _status_kb("VmHWM") or 0
