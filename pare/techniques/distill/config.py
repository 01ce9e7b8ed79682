"""Options of the ``distill`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pare.config import Config, param
from pare.models import check_model_config


@dataclass(frozen=True)
class StudentConfig(Config):
    """The model that learns: a zoo model, a user factory, or the teacher itself shrunk (its
    channels pruned to ``shrink`` of its parameters, keeping the teacher's strongest weights)."""

    name: str | None = None
    factory: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    shrink: float | None = param(None, gt=0, lt=1)

    def check(self) -> list[str]:
        given = [k for k in ("name", "factory", "shrink") if getattr(self, k) is not None]
        if len(given) != 1:
            return [
                "give exactly one of name (a zoo model), factory ('package.module:function') or "
                f"shrink (a fraction of the teacher's parameters); got {given or 'none'}"
            ]
        if self.shrink is None:
            return [p.removeprefix("model.") for p in check_model_config(self)]
        if self.args or self.weights:
            return ["args and weights describe a new model; a shrunk teacher takes neither"]
        return []


@dataclass(frozen=True)
class TeacherConfig(Config):
    """A teacher: an earlier stage's model (``stage: baseline``), or a model of its own, loaded
    from ``weights`` or, without weights, trained on this data with the recipe's settings."""

    stage: str | None = None
    name: str | None = None
    factory: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weight: float | None = param(None, gt=0)  # for weighting: fixed

    def check(self) -> list[str]:
        given = [k for k in ("stage", "name", "factory") if getattr(self, k) is not None]
        if len(given) != 1:
            return [f"give exactly one of stage, name or factory; got {given or 'none'}"]
        if self.stage is None:
            return [p.removeprefix("model.") for p in check_model_config(self)]
        return []


@dataclass(frozen=True)
class FeatureConfig(Config):
    """Match an intermediate output of the student to one of the (first) teacher; a learned
    1x1 convolution or linear adapter bridges different widths."""

    teacher: str
    student: str
    loss: Literal["mse", "cosine"] = "mse"
    weight: float = param(1.0, gt=0)


@dataclass(frozen=True)
class CRDConfig(Config):
    """Contrastive representation distillation: the student's embedding of a sample must pick
    the teacher's embedding of the same sample out of negatives (InfoNCE)."""

    weight: float = param(0.5, gt=0)
    dim: int = param(64, ge=2)  # shared embedding width of both projection heads
    temperature: float = param(0.1, gt=0)
    negatives: Literal["batch", "memory"] = "batch"
    memory_size: int = param(1024, ge=16)  # memory: teacher embeddings kept from earlier batches
    teacher_layer: str | None = None  # default: the input of the last Linear layer
    student_layer: str | None = None


@dataclass(frozen=True)
class DistillConfig(Config):
    """Train a student to match one or more teachers: soft targets, features, contrastive."""

    student: StudentConfig | None = None
    teachers: list[TeacherConfig] = field(default_factory=list)  # default: the stage's input model
    weighting: Literal["average", "fixed", "confidence"] = "average"
    temperature: float = param(4.0, gt=0)
    alpha: float = param(0.9, ge=0, le=1)  # weight of the soft-target loss; 1 - alpha on the labels
    features: list[FeatureConfig] = field(default_factory=list)
    crd: CRDConfig | None = None
    generations: int = param(1, ge=1)  # born-again: each generation's student teaches the next
    epochs: int | None = param(None, ge=1)  # default: the recipe's train.epochs
    lr: float | None = param(None, gt=0)
    cache_teacher: bool = True  # compute teacher outputs once (teachers are frozen, inputs not augmented)
    # language models: match the teacher's k most likely next tokens per position plus one bucket
    # for the rest (its cache then holds k log-probabilities and ids per position instead of the
    # whole vocabulary); None: all of them
    top_k: int | None = param(None, ge=1)

    def check(self) -> list[str]:
        problems = []
        if self.student is None and not self.teachers:
            problems.append(
                "student: without a student the stage's input model is trained, so name its teachers "
                "(e.g. teachers: [{stage: baseline}]); or give a student such as {name: cnn, args: {width: 8}} "
                "or {shrink: 0.25}"
            )
        if self.weighting == "fixed":
            missing = [i for i, t in enumerate(self.teachers) if t.weight is None]
            if not self.teachers or missing:
                problems.append(
                    "weighting: 'fixed' needs a weight on every teacher"
                    + (f" (missing on teachers {missing})" if missing else " and a teachers list")
                )
        elif any(t.weight is not None for t in self.teachers):
            problems.append(f"teachers[].weight: only used with weighting: fixed (got {self.weighting!r})")
        if self.alpha == 0 and not self.features and self.crd is None:
            problems.append("alpha: 0 with no features and no crd leaves nothing to distil")
        return problems

    def task_problems(self, kind: str) -> list[str]:
        """What distillation for a ``kind`` task does not take (a language model is distilled per
        token, from one teacher): checked by ``pare validate`` and before the stage does any work."""
        lm = kind == "language_model"
        problems = []
        if self.top_k is not None and not lm:
            problems.append(
                f"top_k: only language models keep their teacher's top tokens; this task is {kind}"
            )
        if lm and self.crd is not None:
            problems.append(
                "crd: contrasts one embedding per sample; a language model is distilled per token (drop crd)"
            )
        if lm and len(self.teachers) > 1:
            problems.append(f"teachers: a language model learns from one teacher; got {len(self.teachers)}")
        if lm and self.student is not None and self.student.shrink is not None:
            problems.append(
                "student.shrink: prunes channels through a traced graph, which a language model is not; prune it "
                "first (prune with method: blocks, heads or ffn) and distil that stage (student omitted, "
                "teachers: [{stage: baseline}])"
            )
        return problems
