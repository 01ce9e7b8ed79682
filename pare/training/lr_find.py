"""Learning-rate range test (Smith 2017): raise the rate exponentially over a few hundred steps
and watch the training loss; a good rate sits where the loss falls fastest."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch.nn.functional as F

from pare.data import Part
from pare.seeding import seed_everything
from pare.training.loop import batches, make_optimizer


def lr_find(model, train: Part, cfg, *, start_lr=1e-6, end_lr=1.0, steps=100, seed=0, smoothing=0.9) -> dict:
    """Returns ``{"lrs", "losses", "suggested_lr"}``; ``model`` is left untouched."""
    model = copy.deepcopy(model).train()
    generator = seed_everything(seed)
    opt = make_optimizer(model.parameters(), cfg)
    factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    step = 0
    while step < steps:
        for x, y in batches(train, cfg.batch_size, generator):
            lr = start_lr * factor**step
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            avg = smoothing * avg + (1 - smoothing) * loss.item()
            smoothed = avg / (1 - smoothing ** (step + 1))  # bias-corrected moving average
            step += 1
            if not math.isfinite(smoothed) or smoothed > 4 * best:
                step = steps  # diverged: the rest of the range is useless
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
            if step >= steps:
                break
    suggested = None
    if len(losses) >= 5:
        slopes = np.gradient(np.array(losses), np.log10(np.array(lrs)))
        # Ignore the first and last tenth: the average is still settling / already diverging.
        lo, hi = len(slopes) // 10, len(slopes) - len(slopes) // 10
        suggested = float(lrs[lo + int(np.argmin(slopes[lo:hi]))])
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggested}
