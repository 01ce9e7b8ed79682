"""The task interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict
    y: np.ndarray
    outputs: np.ndarray  # what the model produced on the part: class probabilities, embeddings, ...


class Task:
    """Everything that differs between task kinds: the loss, what a model outputs, the metrics
    and their direction, what a drop means, the baseline's diagnosis. A new kind is one subclass
    registered in ``pare.tasks`` (plus a data loader)."""

    kind = ""
    headline = ""  # the validation metric techniques optimise
    higher_is_better = True
    drop_unit = "points"  # "points": 100 x the difference of a [0, 1] metric; "percent": relative
    summary_metrics: tuple[str, ...] = ()  # the columns a person scans first
    outputs_are_probabilities = False  # stored outputs are class probabilities (ROC curves apply)
    uses_reference = False  # outputs() takes the baseline's stored outputs on the part (reference=)

    def report_metrics(self, metrics: dict, classes: list[str]) -> list[str]:
        """The report's quality columns, in order (default: every number the task scored)."""
        return [k for k, v in metrics.items() if isinstance(v, float)]

    def describe(self, split) -> str:
        """A few words on what the split asks of a model, for progress lines."""
        return self.kind.replace("_", " ")

    def drop(self, base: float, value: float) -> float:
        """How much worse ``value`` of the headline metric is than ``base`` (negative: better),
        in ``drop_unit``. The one definition of points against percent."""
        worse = base - value if self.higher_is_better else value - base
        return 100.0 * (worse if self.drop_unit == "points" else worse / abs(base))

    def signed(self, value: float) -> float:
        """The headline value turned so that higher is better (what searches maximise)."""
        return value if self.higher_is_better else -value

    def diagnose(self, model, split) -> dict | None:
        """Over- and underfitting flags for a trained baseline (None: this kind has none)."""
        return None

    @torch.no_grad()
    def loss_and_accuracy(self, model, part, batch_size: int = 512) -> tuple[float, float]:
        """Mean loss and mean ``hits`` of ``model`` over a part, in eval mode."""
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0.0
        for i in range(0, len(part), batch_size):
            x, y = part.X[i : i + batch_size], part.y[i : i + batch_size]
            outputs = model(self.inputs(x))
            total_loss += self.loss(outputs, y).item() * len(y)
            correct += self.hits(outputs, y)
        model.train(was_training)
        return total_loss / len(part), correct / len(part)

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """The model's input for rows of a part's ``X``."""
        return X

    def output_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows of ``model(inputs(X))`` that belong to rows ``indices`` of ``X``."""
        return indices

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hits(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        """Correct predictions in a batch, summed over its rows (a language model's row counts
        its share of correct tokens): the training history's accuracy is their mean."""
        raise NotImplementedError

    def outputs(self, run: Callable, part, batch_size: int = 256) -> np.ndarray:
        """Run ``run`` (a torch model or an ONNX Runtime session wrapped as a function of a
        tensor) over a part in batches; the stored outputs ``score`` and ``paired`` read."""
        raise NotImplementedError

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0) -> Evaluation:
        raise NotImplementedError

    def agreement(self, outputs, reference, prefix: str = "") -> dict[str, float]:
        """How closely two runs of one model agree (e.g. ONNX Runtime against torch)."""
        raise NotImplementedError

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0) -> dict:
        """Metric differences against ``reference`` outputs on the same samples, with paired
        bootstrap intervals."""
        raise NotImplementedError


def batched(run: Callable, X: torch.Tensor, batch_size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch_size):
            o = run(X[i : i + batch_size])
            out.append(o.float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, dtype=np.float32))
    return np.concatenate(out)
