"""Language modelling: token ids in (N, T), next tokens as targets (N, T), logits (N, T, V) out.

The stored outputs are each target token's negative log-likelihood (N, T), a fraction of the
logits' size; perplexity is exp of their mean. Windows all have T tokens, so resampling
windows and averaging keeps every token's weight equal: intervals come from resampled
windows, paired against the baseline on the same windows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pare.metrics.bootstrap import interval, resample_indices
from pare.tasks.base import Evaluation, Task


class LanguageModel(Task):
    kind = "language_model"
    headline = "perplexity"
    higher_is_better = False
    drop_unit = "percent"
    summary_metrics = ("perplexity", "token_accuracy", "nll")

    def loss(self, outputs, y):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1))

    def hits(self, outputs, y):
        return float((outputs.argmax(-1) == y).float().mean(1).sum())  # token accuracy, per window

    def outputs(self, run, part, batch_size=64):
        nll, hit = [], []
        with torch.inference_mode():
            for i in range(0, len(part), batch_size):
                logits = torch.as_tensor(run(part.X[i : i + batch_size])).float()
                y = part.y[i : i + batch_size]
                nll.append(-torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1))
                hit.append((logits.argmax(-1) == y).float())
        # one array: NLL per token, then hit per token (T each)
        return torch.cat([torch.cat(nll), torch.cat(hit)], dim=1).numpy()

    @staticmethod
    def _split(outputs):
        t = outputs.shape[1] // 2
        return outputs[:, :t], outputs[:, t:]

    def score(self, y, outputs, *, classes=None, bootstrap=1000, confidence=0.95, seed=0):
        nll, hit = self._split(outputs)
        mean_nll = float(nll.mean())
        metrics = {"perplexity": math.exp(mean_nll), "nll": mean_nll, "token_accuracy": float(hit.mean())}
        if bootstrap:
            idx = resample_indices(len(nll), bootstrap, seed)
            per_window = nll.mean(1)
            suffix = f"_ci{round(confidence * 100)}"
            metrics["perplexity" + suffix] = interval(np.exp(per_window[idx].mean(1)), confidence)
        details = {"windows": int(nll.shape[0]), "tokens": int(nll.size)}
        return Evaluation(metrics, details, y, outputs)

    def agreement(self, outputs, reference, prefix=""):
        a, b = self._split(outputs)[0], self._split(reference)[0]
        return {f"{prefix}nll_abs_diff": float(np.abs(a - b).mean())}

    def paired(self, y, outputs, reference, *, n_boot=1000, confidence=0.95, seed=0):
        if not n_boot:
            return {}
        a, b = self._split(outputs)[0].mean(1), self._split(reference)[0].mean(1)
        idx = resample_indices(len(a), n_boot, seed)
        diff = np.exp(a[idx].mean(1)) - np.exp(b[idx].mean(1))
        return {f"perplexity_delta_ci{round(confidence * 100)}": interval(diff, confidence)}
