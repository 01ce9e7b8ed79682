"""Labelled images in the IDX format of MNIST and Fashion-MNIST, with their official test set.

A folder holds ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and the ``t10k-`` pair
(each possibly ``.gz``). The t10k images are the test part, as every published figure on these
sets uses; validation is a seeded, stratified share of the training images. Debian's
``dataset-fashion-mnist`` package installs Fashion-MNIST at ``FASHION_MNIST``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pare.data.dataset import Dataset
from pare.errors import DataError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_MAGIC = {1: 0x801, 3: 0x803}  # unsigned bytes, 1 dimension (labels) or 3 (images)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file of unsigned bytes: a big-endian magic number, the sizes, then the values."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read this IDX file ({e})") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _MAGIC[dims]:
        raise DataError(
            f"{path}: not an IDX file of {dims}-dimensional unsigned bytes (magic number "
            f"{magic if magic is None else hex(magic)}, expected {hex(_MAGIC[dims])})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    start, count = 4 + 4 * dims, int(np.prod(shape))
    if len(raw) != start + count:
        raise DataError(
            f"{path}: header says {shape} ({count:,} values) but the file holds {len(raw) - start:,}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def _pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def find(kind: str, dims: int) -> np.ndarray:
        names = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}-idx{dims}-ubyte.gz"]
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            raise DataError(f"{folder}: no {names[0]}[.gz]; an IDX folder holds the train- and t10k- pairs")
        return read_idx(found[0], dims)

    images, labels = find("images", 3), find("labels", 1)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {prefix} has {len(images):,} images but {len(labels):,} labels")
    return images, labels


def load_idx(
    path: str | Path,
    *,
    max_samples: int | None,
    val: float,
    seed: int,
    image_size: tuple[int, int] | None = None,
    channels: int = 1,
    classes: list[str] | None = None,
) -> Dataset:
    """The folder's images as (N, C, H, W) floats in [0, 1], test (t10k) rows first, then a
    stratified validation share of train; ``max_samples`` keeps a seeded, stratified subset of
    each part in their original proportion, before any resize (70,000 images at 224 x 224 x 3
    would be 42 GB)."""
    from sklearn.model_selection import train_test_split

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"IDX folder {str(folder)!r} does not exist; check data.path in the recipe")
    train_x, train_y = _pair(folder, "train")
    test_x, test_y = _pair(folder, "t10k")
    total = len(train_y) + len(test_y)
    rng = np.random.RandomState(seed)

    def subset(y: np.ndarray, n: int) -> np.ndarray:
        if n >= len(y):
            return np.arange(len(y))
        keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=rng)
        return np.sort(keep)

    if max_samples is not None and max_samples < total:
        test_keep = subset(test_y, max(10, round(max_samples * len(test_y) / total)))
        train_keep = subset(train_y, max_samples - len(test_keep))
        test_x, test_y, train_x, train_y = (
            test_x[test_keep],
            test_y[test_keep],
            train_x[train_keep],
            train_y[train_keep],
        )
    fit, held = train_test_split(np.arange(len(train_y)), test_size=val, stratify=train_y, random_state=seed)
    X = np.concatenate([test_x, train_x[held], train_x[fit]])[:, None].astype(np.float32) / 255.0
    y = np.concatenate([test_y, train_y[held], train_y[fit]]).astype(np.int64)
    if image_size is not None:
        import torch
        import torch.nn.functional as F

        X = F.interpolate(
            torch.from_numpy(X), size=tuple(image_size), mode="bilinear", align_corners=False
        ).numpy()
    if channels == 3:
        X = np.repeat(X, 3, axis=1)  # grey to RGB, for networks pretrained on colour images
    names = classes or [str(c) for c in range(int(y.max()) + 1)]
    if int(y.max()) >= len(names):
        raise DataError(f"{folder}: label {int(y.max())} has no class name ({len(names)} known)")
    return Dataset(name=folder.name, X=X, y=y, classes=names, part_sizes=(len(test_y), len(held)))
