"""Hooks let techniques change training without a loop of their own.

Every method does nothing by default; a hook overrides only what it changes. Quantization-aware
training wraps the forward pass, distillation adds a loss term, sparsity regularisation adds a
penalty and masks weights after each step, fine-tuning simply trains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: Any
    epoch: int = 0
    step: int = 0
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # rows of the training part in this batch (for cached outputs)
    outputs: torch.Tensor | None = None
    task_weight: float = 1.0  # weight of the cross-entropy on the labels (distillation lowers it)
    extra: dict = field(default_factory=dict)  # hooks share state here


class Hook:
    def on_train_start(self, state: TrainState) -> None: ...

    def forward_context(self, state: TrainState):
        """A context manager around the model's forward pass (e.g. fake-quant)."""
        return contextlib.nullcontext()

    def before_step(self, state: TrainState) -> None: ...

    def loss_terms(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Extra loss terms added to the task loss, by name (logged separately)."""
        return {}

    def after_step(self, state: TrainState) -> None:
        """After the optimizer step (e.g. re-apply pruning masks)."""

    def on_epoch_end(self, state: TrainState, record: dict) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...
