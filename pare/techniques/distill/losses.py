"""Distillation losses as pure functions of tensors (tested on hand-computed values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(
    teacher_logits: list[torch.Tensor],
    temperature: float,
    weighting: str = "average",
    weights: list[float] | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """One probability distribution per sample from several teachers at ``temperature``.

    average: the mean of the teachers' distributions; fixed: weighted by ``weights``
    (normalised); confidence: per sample, teachers weighted by softmax(-cross-entropy on the
    true label), so a teacher that is right about this sample counts more (Zhang et al. 2022).
    """
    probs = torch.stack([F.softmax(t / temperature, dim=1) for t in teacher_logits])  # (K, B, C)
    if weighting == "average":
        w = torch.full((len(teacher_logits), 1), 1.0 / len(teacher_logits))
    elif weighting == "fixed":
        w = torch.tensor(weights, dtype=probs.dtype).reshape(-1, 1)
        w = w / w.sum()
    elif weighting == "confidence":
        ce = torch.stack([F.cross_entropy(t, labels, reduction="none") for t in teacher_logits])
        w = F.softmax(-ce, dim=0)  # (K, B)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return (w.unsqueeze(-1) * probs).sum(0)


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times T^2 so that its gradients keep the same
    scale as the hard-label loss when T changes (Hinton et al. 2015)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p, target_probs, reduction="batchmean") * temperature**2


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    scored: torch.Tensor,
    temperature: float,
    teacher_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """A language model's next-token KD: KL(teacher || student) at ``temperature`` (times T^2),
    averaged over the positions where ``scored`` (B, T) is true. ``teacher``: its logits; or,
    with ``teacher_ids``, its log-probabilities (softmax at ``temperature`` over the whole
    vocabulary) of only those top-k tokens per position. Then the KL is taken over the k tokens
    plus one bucket holding the rest of the vocabulary on both sides (as the evaluation's KL is):
    a lower bound of the full KL, equal to it when the k tokens hold the teacher's mass, and it
    does not push the student to crowd its mass onto those k tokens."""
    log_q = F.log_softmax(student_logits[scored] / temperature, dim=-1)
    if teacher_ids is None:
        log_p = F.log_softmax(teacher[scored].float() / temperature, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    log_p, log_q = teacher[scored].float(), log_q.gather(-1, teacher_ids[scored].long())
    rest_p = (1 - log_p.exp().sum(-1)).clamp(min=1e-12)
    rest_q = (1 - log_q.exp().sum(-1)).clamp(min=1e-12)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())
    return kl.mean() * temperature**2


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, mask=None) -> torch.Tensor:
    """MSE, or 1 - cosine similarity of each sample's flattened features, averaged. ``mask``
    (samples x positions) keeps only those positions of token features (a language model's
    hidden states: padding left out), each position then one sample."""
    if mask is not None:
        student, teacher = student[mask], teacher[mask]
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()


def info_nce(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, negatives=None
) -> torch.Tensor:
    """Contrastive loss: sample i's student embedding against every teacher embedding of the
    batch (and ``negatives`` from a memory), the positive being teacher embedding i. Inputs
    are L2-normalised here."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    keys = t if negatives is None or len(negatives) == 0 else torch.cat([t, negatives])
    logits = s @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(s)))
