"""In-memory datasets and their seeded, stratified splits.

Preprocessing (standardisation) is fitted on the training part only and then applied to the
validation and test parts, so no statistic of held-out data leaks into training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from pare.errors import DataError


@dataclass
class Dataset:
    """Features ``X`` (N, *input_shape) float32, integer labels ``y`` (N,), class names.
    For retrieval, ``X`` is (N, 2, L) token ids: row i is a query and its passage."""

    name: str
    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    kind: str = "classification"
    vocab: int | None = None  # language models: the number of token ids (their "classes")
    part_sizes: tuple[int, int] | None = None  # (test, val) rows first, in order: held out by the loader

    def __post_init__(self):
        check_arrays(self.X, self.y, self.name, self.classes if self.kind == "classification" else None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What the model takes per sample (a retrieval row holds two texts of this shape)."""
        return tuple(self.X.shape[2:] if self.kind == "retrieval" else self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return self.vocab or len(self.classes)


@dataclass
class Part:
    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Split:
    """Train / validation / test parts of one dataset, ready for torch."""

    train: Part
    val: Part
    test: Part
    classes: list[str]
    input_shape: tuple[int, ...]
    name: str
    fold: int | None = None
    preprocessing: dict = field(default_factory=dict)
    kind: str = "classification"
    vocab: int | None = None

    @property
    def num_classes(self) -> int:
        return self.vocab or len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}


def check_arrays(X: np.ndarray, y: np.ndarray, source: str, classes: list[str] | None = None) -> None:
    """Reject what would silently train badly: NaN/inf, mismatched lengths, a single class."""
    if len(X) != len(y):
        raise DataError(f"{source}: {len(X)} samples but {len(y)} labels; they must match")
    if len(X) == 0:
        raise DataError(f"{source}: the dataset is empty")
    bad = ~np.isfinite(X)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: {int(bad.sum())} NaN or infinite feature value(s), first at sample {int(where[0])}, "
            f"feature index {tuple(int(i) for i in where[1:])}; clean or impute them before training"
        )
    present = np.unique(y)
    if classes is not None and len(present) < 2:
        label = classes[int(present[0])] if classes else present[0].item()
        raise DataError(
            f"{source}: every sample has the label {label!r}; classification needs at least 2 classes"
        )


def split_dataset(ds: Dataset, *, val: float, test: float, seed: int, standardize: bool) -> Split:
    """Seeded train/val/test split, stratified by class for classification."""
    idx = np.arange(len(ds.y))
    if ds.part_sizes is not None:  # the loader already decided what is held out (whole topics)
        n_test, n_val = ds.part_sizes
        return _make_split(
            ds, idx[n_test + n_val :], idx[n_test : n_test + n_val], idx[:n_test], standardize=standardize
        )
    stratify = ds.kind == "classification"
    if stratify:
        _check_class_counts(ds, needed=3)
    rest, test_idx = train_test_split(
        idx, test_size=test, stratify=ds.y if stratify else None, random_state=seed
    )
    train_idx, val_idx = train_test_split(
        rest, test_size=val / (1 - test), stratify=ds.y[rest] if stratify else None, random_state=seed
    )
    return _make_split(ds, train_idx, val_idx, test_idx, standardize=standardize)


def kfold_splits(ds: Dataset, *, folds: int, val: float, seed: int, standardize: bool) -> list[Split]:
    """K folds (stratified for classes); each fold tests on its held-out part and carves
    validation from the rest."""
    stratify = ds.kind == "classification"
    if stratify:
        _check_class_counts(ds, needed=folds)
    kind = StratifiedKFold if stratify else KFold
    splits = []
    for i, (rest, test_idx) in enumerate(kind(folds, shuffle=True, random_state=seed).split(ds.X, ds.y)):
        strata = ds.y[rest] if stratify else None
        train_idx, val_idx = train_test_split(rest, test_size=val, stratify=strata, random_state=seed + i)
        split = _make_split(ds, train_idx, val_idx, test_idx, standardize=standardize)
        split.fold = i
        splits.append(split)
    return splits


def _check_class_counts(ds: Dataset, needed: int) -> None:
    labels, counts = np.unique(ds.y, return_counts=True)
    small = [(ds.classes[int(c)], int(n)) for c, n in zip(labels, counts) if n < needed]
    if small:
        listed = ", ".join(f"{name!r} ({n})" for name, n in small[:5])
        raise DataError(
            f"{ds.name}: class(es) {listed} have fewer than {needed} samples, too few for a stratified "
            f"split; add samples, merge classes or lower data.cv_folds"
        )


def _make_split(ds: Dataset, train_idx, val_idx, test_idx, *, standardize: bool) -> Split:
    text = np.issubdtype(ds.X.dtype, np.integer)  # token ids stay integers
    X = ds.X if text else ds.X.astype(np.float32)
    prep: dict = {}
    if standardize and not text:
        X, prep = _standardize(X, train_idx)

    y, dtype = ds.y, np.int64
    if ds.kind == "regression":  # targets in units of the training part's spread, like the features
        mean, std = float(ds.y[train_idx].mean()), float(ds.y[train_idx].std()) or 1.0
        y, dtype = (ds.y - mean) / std, np.float32
        prep["target"] = {"mean": mean, "std": std}

    def part(ix):
        rows = np.arange(len(ix)) if ds.kind == "retrieval" else y[ix]  # retrieval: row i matches row i
        return Part(torch.from_numpy(np.ascontiguousarray(X[ix])), torch.from_numpy(rows.astype(dtype)))

    return Split(
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        classes=list(ds.classes),
        input_shape=ds.input_shape,
        name=ds.name,
        preprocessing=prep,
        kind=ds.kind,
        vocab=ds.vocab,
    )


def _standardize(X: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, dict]:
    # Images (N, C, H, W): one mean/std per channel. Vectors (N, D): one per feature.
    axes = (0, 2, 3) if X.ndim == 4 else 0
    train = X[train_idx]
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    std = np.where(std < 1e-8, 1.0, std)  # constant features stay as they are (centred)
    out = (X - mean) / std
    return out.astype(np.float32), {
        "standardize": {"mean": mean.squeeze().tolist(), "std": std.squeeze().tolist()}
    }
