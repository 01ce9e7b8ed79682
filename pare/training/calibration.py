"""What one-shot methods (GPTQ, AWQ, SparseGPT, Wanda) read from calibration data: the
batches, drawn from the training split; each layer's input statistics (X^T X, mean |x|, a row
sample), gathered through ``pare.training.blockwise``; and the damped inverse Hessian factor
that GPTQ and SparseGPT walk the columns with. Shared here so that no technique imports
another."""

from __future__ import annotations

import warnings

import torch

from pare.errors import DataError, PareError
from pare.tasks import get_task
from pare.training.blockwise import model_feed

GPTQ_TOKENS = 16_384  # fewer calibration tokens than this and GPTQ's Hessians are poorly estimated
BATCH_TOKENS = 2_048  # token rows per calibration batch: what one batch costs inside a block


def calibration_batches(ctx, config, batch_size: int = 64):
    """Calibration samples (``config.calibration_samples``; ``config.method`` 'gptq' warns when
    they hold too few tokens): a seeded draw from the training split, never from test. Token rows
    (a language model's windows) go in batches of about ``BATCH_TOKENS`` tokens: inside a block
    a batch's attention scores grow with rows x length^2 (64 windows of 256 tokens: 150 MB per
    score tensor in SmolLM2), which is what bounds calibration's memory after the weights."""
    X = get_task(ctx.split.kind).inputs(ctx.split.train.X)
    if len(X) < config.calibration_samples:
        warnings.warn(
            f"quantize: only {len(X)} training samples for calibration (calibration_samples="
            f"{config.calibration_samples}); activation ranges may be less reliable",
            stacklevel=2,
        )
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(ctx.seed))[
        : config.calibration_samples
    ]
    sample = X[order]
    if not torch.isfinite(sample).all():
        raise DataError("quantize: calibration data contains NaN or infinite values; clean the training data")
    tokens = sample.dim() == 2 and not sample.is_floating_point()
    if tokens:
        batch_size = max(1, BATCH_TOKENS // sample.shape[1])
        if config.method == "gptq" and sample.numel() < GPTQ_TOKENS:
            warnings.warn(
                f"quantize: GPTQ calibrates on {sample.numel():,} tokens ({len(sample)} windows of "
                f"{sample.shape[1]}); its Hessians need at least {GPTQ_TOKENS:,} (the GPTQ paper used "
                f"128 x 2,048): raise calibration_samples",
                stacklevel=2,
            )
    return [sample[i : i + batch_size] for i in range(0, len(sample), batch_size)]


class InputStats:
    """What GPTQ and AWQ need from a layer's inputs X: X^T X, mean |x| per channel, a row sample;
    given the same layer's inputs X_ref in the float model too, X^T (X_ref - X) and their sample."""

    def __init__(self, in_features: int, keep_rows: int = 512):
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.cross: torch.Tensor | None = None  # X^T (X_ref - X), once inputs come paired
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        self.rows = 0
        self.sample: list[torch.Tensor] = []
        self.sample_ref: list[torch.Tensor] = []
        self.keep_rows = keep_rows

    def update(self, x: torch.Tensor, x_ref: torch.Tensor | None = None) -> None:
        self.add(products(x, x_ref))

    def add(self, p: dict) -> None:
        """Add one batch's ``products`` (shareable between layers that read the same tensor)."""
        self.xtx += p["xtx"]
        self.abs_sum += p["abs_sum"]
        self.rows += len(p["x"])
        kept = sum(len(s) for s in self.sample)
        if "cross" in p:
            self.cross = p["cross"] if self.cross is None else self.cross + p["cross"]
            if kept < self.keep_rows:
                self.sample_ref.append(p["x_ref"][: self.keep_rows - kept])
        if kept < self.keep_rows:
            self.sample.append(p["x"][: self.keep_rows - kept])

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx / max(self.rows, 1)

    @property
    def drift(self) -> torch.Tensor | None:
        """X^T (X_ref - X) / rows: how far earlier quantized layers moved this layer's inputs."""
        return None if self.cross is None else self.cross / max(self.rows, 1)

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.rows, 1)).float()


def products(x: torch.Tensor, x_ref: torch.Tensor | None = None) -> dict:
    """One batch's X^T X, sum |x| (and X^T (X_ref - X)): float32 products (four times float64's
    speed on CPU, and each batch's sum is short), float64 sums across batches."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    p = {"x": x, "xtx": (x.T @ x).double(), "abs_sum": x.abs().sum(0).double()}
    if x_ref is not None:
        p["x_ref"] = x_ref.detach().reshape(-1, x.shape[-1]).float()
        p["cross"] = (x.T @ (p["x_ref"] - x)).double()
    return p


def _in_features(m: torch.nn.Module) -> int:
    return m.in_features if hasattr(m, "in_features") else m.base.in_features  # a Linear or its QuantLayer


def collect_input_stats(
    model: torch.nn.Module, layers: dict[str, torch.nn.Module], batches
) -> dict[str, InputStats]:
    """Run ``batches`` through ``model`` and record the inputs of each named layer."""
    return group_stats(model_feed(model, list(layers), batches, stop=False), layers)


def group_stats(feed, layers: dict[str, torch.nn.Module]) -> dict[str, InputStats]:
    """The statistics of what ``feed`` (see pare.training.blockwise) gives each named layer.
    Layers called on the very tensors the layer before was (q/k/v, gate/up) reuse its
    products: X^T X is most of the cost."""
    stats = {n: InputStats(_in_features(m)) for n, m in layers.items()}
    last: list = [None, None, None]  # the previous call's inputs and their products

    def observe(name, x, x_ref=None):
        if not (x is last[0] and x_ref is last[1]):
            last[:] = [x, x_ref, products(x, x_ref)]
        stats[name].add(last[2])

    feed(observe)
    return stats


def inverse_hessian_factor(h: torch.Tensor, damp: float, name: str, method: str) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, damping more until H is positive definite (``h``'s diagonal
    is overwritten)."""
    diag = h.diagonal().clone()
    mean_diag = diag.mean().clamp(min=1e-12)
    for attempt in range(4):
        # H + d I damped in place (``h`` is GPTQ's own copy): no identity, no second (in, in) copy
        torch.add(diag, damp * (10**attempt) * mean_diag, out=h.diagonal())
        chol, info = torch.linalg.cholesky_ex(h)
        if info == 0:
            inverse = torch.cholesky_inverse(chol)
            del chol
            return torch.linalg.cholesky(inverse, upper=True)
    raise PareError(
        f"{method}: the input Hessian of layer {name!r} is not positive definite even with damping "
        f"{damp * 1000:g} x mean diagonal; raise damp or give more (varied) calibration samples"
    )
