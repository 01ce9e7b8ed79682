"""Options of the ``prune`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pare.config import Config, param


@dataclass(frozen=True)
class PruneConfig(Config):
    """Remove weights (unstructured, N:M) or whole channels (structured), once or in steps."""

    method: Literal["structured", "unstructured", "n_m", "blocks", "heads", "ffn"] = "structured"
    # wanda, sparsegpt: one-shot from calibration inputs, Linear layers, unstructured or N:M;
    # wanda also scores heads and ffn neurons (|w| x ||x|| over their output projection's columns);
    # cosine: blocks by how little they turn the hidden state on calibration inputs (else: by the
    # validation score without each)
    criterion: Literal[
        "l1", "l2", "taylor", "bn_scale", "entropy", "random", "wanda", "sparsegpt", "cosine"
    ] = "l1"
    scope: Literal["layer", "global"] = "layer"
    target: Literal["sparsity", "macs", "params"] = "sparsity"
    # the fraction of the target quantity to remove (method blocks, target sparsity: of the blocks)
    amount: float = param(0.5, gt=0, lt=1)
    n: int = param(2, ge=1)
    m: int = param(4, ge=2)
    steps: int = param(1, ge=1)
    schedule: Literal["linear", "cubic"] = "cubic"
    finetune_epochs: int = param(0, ge=0)  # after every step
    finetune_lr: float | None = param(None, gt=0)
    regularization: Literal["none", "l1", "l2", "group_lasso"] = "none"
    reg_strength: float = param(1e-4, gt=0)
    reg_epochs: int = param(0, ge=0)  # sparsity training before the first step
    score_batches: int = param(8, ge=1)  # training batches for taylor / entropy scores
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics on training batches after each step
    round_to: int = param(
        1, ge=1
    )  # structured: keep channel counts at multiples of this (8 suits CPU kernels)
    layers: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    # wanda, sparsegpt, cosine: the training samples (windows) they calibrate on
    calibration_samples: int = param(128, ge=1)
    damp: float = param(0.01, gt=0, lt=1)  # sparsegpt: diagonal damping, share of the mean diagonal

    @property
    def one_shot(self) -> bool:
        """Pruned once from calibration inputs, layer by layer (Wanda, SparseGPT)."""
        return self.criterion in ("wanda", "sparsegpt") and self.method in ("unstructured", "n_m")

    @property
    def reshapes(self) -> bool:
        """Whole channels, heads or neurons go: the layers get smaller and are rebuilt on resume."""
        return self.method in ("structured", "heads", "ffn")

    def check(self) -> list[str]:
        problems = []
        if self.criterion == "cosine" and self.method != "blocks":
            problems.append("criterion: 'cosine' scores whole blocks; use method: blocks")
        if self.method in ("heads", "ffn") and self.target != "sparsity":
            problems.append(
                f"target: method {self.method!r} removes a share of the {self.method}; use target: sparsity "
                f"(amount = the share removed)"
            )
        if self.method in ("heads", "ffn") and self.criterion in ("bn_scale", "entropy"):
            problems.append(
                f"criterion: {self.criterion!r} does not score {self.method}; use l1, l2, taylor, wanda or random"
            )
        if self.method == "blocks" and self.steps > 1:
            problems.append("steps: method 'blocks' drops blocks in one step; use steps: 1")
        if self.method not in ("structured", "blocks", "heads", "ffn") and self.criterion in (
            "bn_scale",
            "entropy",
        ):
            problems.append(f"criterion: {self.criterion!r} scores channels; use method: structured")
        if self.method in ("unstructured", "n_m") and self.target != "sparsity":
            problems.append(
                f"target: {self.target!r} needs method: structured (zeros inside dense layers save no "
                f"MACs); use target: sparsity"
            )
        if self.criterion == "sparsegpt" and self.method not in ("unstructured", "n_m"):
            problems.append("criterion: 'sparsegpt' removes single weights; use method: unstructured or n_m")
        if self.criterion == "wanda" and self.method not in ("unstructured", "n_m", "heads", "ffn"):
            problems.append(
                "criterion: 'wanda' removes single weights (method: unstructured, n_m) or scores attention "
                f"heads and feed-forward neurons (method: heads, ffn); not method {self.method!r}"
            )
        if self.one_shot and self.scope != "layer":
            problems.append(
                f"scope: criterion {self.criterion!r} compares the weights of one output row; use scope: layer"
            )
        if self.one_shot and self.steps != 1:
            problems.append(f"steps: criterion {self.criterion!r} prunes in one shot; use steps: 1")
        if self.method == "n_m" and self.n >= self.m:
            problems.append(f"n: {self.n} must be smaller than m ({self.m}); 2:4 keeps 2 of every 4")
        if self.regularization == "group_lasso" and self.method != "structured":
            problems.append(
                "regularization: 'group_lasso' pushes whole channels to zero; use it with method: structured"
            )
        if self.regularization != "none" and self.reg_epochs == 0:
            problems.append(
                f"reg_epochs: regularization {self.regularization!r} needs reg_epochs >= 1 of sparsity training"
            )
        return problems
