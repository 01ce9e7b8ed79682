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
    kind = ""
    headline = ""  # the validation metric techniques optimise
    higher_is_better = True
    summary_metrics: tuple[str, ...] = ()  # the columns a person scans first

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
