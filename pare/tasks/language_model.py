"""Language modelling: token ids in (N, T), next tokens as targets (N, T), logits (N, T, V) out.

Targets equal to ``IGNORE`` (-100) are not scored: padding, and in the sliding-window protocol
the context a window shares with the one before it. Perplexity is token-weighted: exp of the
summed negative log-likelihood over the scored tokens divided by their count; intervals come
from resampled windows (ratio of sums, so short windows weigh what their tokens weigh), paired
against the baseline on the same windows.

Fidelity to the baseline, as llama.cpp reports it: the KL divergence of each position's next-token
distribution from the baseline's, and the share of positions whose most likely token is the
baseline's. Full distributions would take gigabytes (positions x vocabulary), so the baseline
keeps its ``TOP_K`` most likely tokens per position and every stage scores those same tokens;
the KL is taken over them plus one bucket for the rest of the vocabulary. That is a lower bound
of the full KL (merging outcomes never increases it) and equals it when the top tokens hold all
the mass.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pare.metrics.bootstrap import interval, resample_indices
from pare.tasks.base import Evaluation, Task

IGNORE = -100
TOP_K = 32
LOGIT_BUDGET = 2**27  # floats of logits per forward batch (512 MiB): windows x positions x vocabulary


class LanguageModel(Task):
    kind = "language_model"
    headline = "perplexity"
    higher_is_better = False
    drop_unit = "percent"
    summary_metrics = ("perplexity", "token_accuracy", "nll")
    uses_reference = True  # outputs() scores the baseline's top tokens (for the KL divergence)

    def loss(self, outputs, y):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1), ignore_index=IGNORE)

    def hits(self, outputs, y):
        valid = (y != IGNORE).float()
        correct = ((outputs.argmax(-1) == y).float() * valid).sum(1)
        return float((correct / valid.sum(1).clamp(min=1)).sum())  # token accuracy, per window

    def outputs(self, run, part, batch_size=64, reference=None):
        """Per window and position: the target's NLL and hit (NaN where not scored), the most
        likely token, and log-probabilities of ``TOP_K`` tokens with their ids: the reference's
        (the baseline's outputs on the same part) when given, else the model's own top ones."""
        ref_ids = None if reference is None else torch.as_tensor(_fields(reference)["ids"])
        rows, i, step = [], 0, 1  # one window first: its logits give the vocabulary, which sizes batches
        with torch.inference_mode():
            while i < len(part):
                logits = torch.as_tensor(run(part.X[i : i + step])).float()
                y = part.y[i : i + len(logits)]
                logp = torch.log_softmax(logits, -1)
                valid = y != IGNORE
                nll = -logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                best = logits.argmax(-1)
                nan = torch.tensor(float("nan"))
                ids = _top_ids(logp) if ref_ids is None else ref_ids[i : i + len(logits)]
                top = logp.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
                columns = [
                    torch.where(valid, nll, nan),
                    torch.where(valid, (best == y).float(), nan),
                    best.float(),
                    top.flatten(1),
                    ids.float().flatten(1),  # token ids are exact in float32 below 2^24
                ]
                rows.append(torch.cat(columns, dim=1))
                i += len(logits)
                step = max(1, min(batch_size, LOGIT_BUDGET // logits[0].numel()))
        return torch.cat(rows).numpy()

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0):
        f = _fields(outputs)
        nll, hit, valid = f["nll"], f["hit"], f["valid"]
        tokens = valid.sum()
        mean_nll = float(np.nansum(nll) / tokens)
        metrics = {
            "perplexity": math.exp(mean_nll),
            "nll": mean_nll,
            "token_accuracy": float(np.nansum(hit) / tokens),
        }
        if bootstrap:
            idx = resample_indices(len(nll), bootstrap, seed)
            sums, counts = np.nansum(nll, 1), valid.sum(1)
            suffix = f"_ci{round(confidence * 100)}"
            metrics["perplexity" + suffix] = interval(
                np.exp(sums[idx].sum(1) / counts[idx].sum(1)), confidence
            )
        details = {"windows": int(nll.shape[0]), "tokens": int(tokens)}
        return Evaluation(metrics, details, y, outputs)

    def agreement(self, outputs, reference, prefix=""):
        a, b = _fields(outputs)["nll"], _fields(reference)["nll"]
        return {f"{prefix}nll_abs_diff": float(np.nanmean(np.abs(a - b)))}

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0):
        if not n_boot:
            return {}
        f, r = _fields(outputs), _fields(reference)
        valid, counts = r["valid"], r["valid"].sum(1)
        idx = resample_indices(len(counts), n_boot, seed)
        suffix = f"_ci{round(confidence * 100)}"

        def ratio(per_position):  # token-weighted mean over resampled windows
            sums = np.where(valid, per_position, 0.0).sum(1)
            return float(sums.sum() / counts.sum()), interval(
                sums[idx].sum(1) / counts[idx].sum(1), confidence
            )

        def perplexity(g):
            return np.exp(np.nansum(g["nll"], 1)[idx].sum(1) / counts[idx].sum(1))

        out = {f"perplexity_delta{suffix}": interval(perplexity(f) - perplexity(r), confidence)}
        same, out[f"same_top_token{suffix}"] = ratio((f["top"] == r["top"]).astype(np.float64))
        out["same_top_token"] = same
        if np.array_equal(f["ids"], r["ids"]):  # the stage scored the baseline's top tokens
            out["kl_divergence"], out[f"kl_divergence{suffix}"] = ratio(_kl(r["logp"], f["logp"]))
            # how much of the baseline's distribution the top tokens hold: the KL's coverage
            out["kl_top_mass"] = ratio(np.exp(r["logp"].astype(np.float64)).sum(-1))[0]
        return out


def _top_ids(logp: torch.Tensor) -> torch.Tensor:
    """The ``TOP_K`` most likely token ids per position; -1 fills the columns a vocabulary
    smaller than ``TOP_K`` leaves (their log-probability is stored as -inf)."""
    ids = logp.topk(min(TOP_K, logp.shape[-1]), -1).indices
    missing = TOP_K - ids.shape[-1]
    return F.pad(ids, (0, missing), value=-1) if missing else ids


def _fields(outputs: np.ndarray) -> dict[str, np.ndarray]:
    """The stored columns of ``LanguageModel.outputs`` by name (T positions per window)."""
    t = outputs.shape[1] // (3 + 2 * TOP_K)
    n = len(outputs)
    nll = outputs[:, :t]
    return {
        "nll": nll,
        "hit": outputs[:, t : 2 * t],
        "valid": ~np.isnan(nll),
        "top": outputs[:, 2 * t : 3 * t],
        "logp": outputs[:, 3 * t : 3 * t + t * TOP_K].reshape(n, t, TOP_K),
        "ids": outputs[:, 3 * t + t * TOP_K :].reshape(n, t, TOP_K).astype(np.int64),
    }


def _kl(p_logp: np.ndarray, q_logp: np.ndarray) -> np.ndarray:
    """KL(P || Q) per position over the given tokens plus one bucket holding the rest of the
    vocabulary (float64: the tail masses are differences of numbers near 1)."""
    p_logp, q_logp = p_logp.astype(np.float64), q_logp.astype(np.float64)
    p, q = np.exp(p_logp), np.exp(q_logp)
    p_rest = np.clip(1 - p.sum(-1), 1e-12, None)
    q_rest = np.clip(1 - q.sum(-1), 1e-12, None)
    with np.errstate(invalid="ignore"):  # -inf - -inf in the columns a small vocabulary leaves
        terms = np.where(p > 0, p * (p_logp - q_logp), 0.0)
    return np.maximum(terms.sum(-1) + p_rest * (np.log(p_rest) - np.log(q_rest)), 0.0)
