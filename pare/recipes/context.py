"""What a technique gets to work with while it runs as a stage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from pare.data import Split
from pare.evaluate import validation_metrics
from pare.tasks import get_task
from pare.training import History, fit

WORK = "work"  # a stage's work in progress, kept by --resume (see StageContext.work_dir)


@dataclass
class StageContext:
    """Data, the trained baseline and every earlier stage's model (teachers for distillation),
    the recipe's training settings and a place for extra files. ``fit`` and ``evaluate`` use validation data only: test data
    is for the final measurement, never for a technique's choices."""

    split: Split
    baseline: nn.Module
    train_config: object
    seed: int
    out_dir: Path
    name: str
    stages: dict[str, nn.Module] = dataclasses.field(default_factory=dict)  # earlier stages by name

    @property
    def work_dir(self) -> Path:
        """Where a long technique keeps what it has finished so far (a calibration's finished
        blocks), to continue from there when an interrupted run is resumed: ``pare run --resume``
        keeps this folder of an unfinished stage, and removes it once the stage is built."""
        return self.out_dir / WORK

    def fit(self, model: nn.Module, *, hooks=(), params=None, label: str = "", **overrides) -> History:
        """Train with the recipe's settings, overridden by keyword (e.g. ``epochs=3, lr=1e-4``);
        ``label`` is appended to the stage name in progress output."""
        cfg = dataclasses.replace(self.train_config, **overrides)
        return fit(
            model,
            self.split.train,
            self.split.val,
            cfg,
            hooks=hooks,
            seed=self.seed,
            params=params,
            description=f"{self.name}{label}",
            task=self.split.kind,
        )

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (no intervals) for choices made inside a technique."""
        return validation_metrics(model, self.split)

    def metric(self, model: nn.Module) -> float:
        """The task's headline validation metric as it is (accuracy, Recall@1, perplexity, R²)."""
        return self.evaluate(model)[get_task(self.split.kind).headline]

    def score(self, model: nn.Module) -> float:
        """The headline validation metric turned so that higher is better (minus perplexity)."""
        return get_task(self.split.kind).signed(self.metric(model))

    def drop(self, base: float, value: float) -> float:
        """How much worse headline ``value`` is than ``base``: points, or percent for perplexity
        (``Task.drop``, what every ``max_drop`` means)."""
        return get_task(self.split.kind).drop(base, value)
