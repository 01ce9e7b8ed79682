"""Where datasets come from: scikit-learn's bundled sets (offline) and the user's own files."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np

from pare.data.dataset import Dataset
from pare.errors import DataError

BUILTIN = ("digits", "breast_cancer", "wine", "iris", "diabetes")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_builtin(name: str) -> Dataset:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader()
    X = bunch.data.astype(np.float32)
    if name == "diabetes":  # disease progression after one year: a number, not a class
        return Dataset(
            name=name, X=X, y=bunch.target.astype(np.float32), classes=["target"], kind="regression"
        )
    if name == "digits":
        X = X.reshape(-1, 1, 8, 8)  # keep the image shape so convolutional models see pixels
    classes = [str(c) for c in bunch.target_names]
    return Dataset(name=name, X=X, y=bunch.target.astype(np.int64), classes=classes)


def resize_images(ds: Dataset, size: tuple[int, int]) -> Dataset:
    """Bilinear resize of an image dataset (N, C, H, W), e.g. digits 8x8 -> 32x32."""
    if ds.X.ndim != 4:
        raise DataError(f"data.image_size: {ds.name!r} is not an image dataset (shape {ds.X.shape[1:]})")
    import torch
    import torch.nn.functional as F

    X = F.interpolate(torch.from_numpy(ds.X), size=tuple(size), mode="bilinear", align_corners=False).numpy()
    return Dataset(name=f"{ds.name}-{size[0]}x{size[1]}", X=X, y=ds.y, classes=ds.classes)


def _existing(path: str | Path, what: str, folder: bool = False) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist; check data.path in the recipe")
    if p.is_dir() and not folder:
        raise DataError(f"{what} {str(p)!r} is a folder, not a file; set data.path to the file itself")
    return p


_MISSING_LABELS = {"", "nan", "none", "null", "na", "n/a"}


def _missing(labels: list[str]) -> list[int]:
    """Positions of labels that stand for "no label" (empty, NaN, NA, null), in CSV and NPZ alike."""
    return [i for i, v in enumerate(labels) if v.strip().lower() in _MISSING_LABELS]


def _encode_labels(raw: list[str], source: str) -> tuple[np.ndarray, list[str]]:
    """Labels may be names or numbers; classes are sorted (numerically when all are numbers)."""
    uniq = sorted(set(raw))
    with contextlib.suppress(ValueError):  # not all numbers: keep the alphabetical order
        uniq = sorted(uniq, key=float)
    index = {c: i for i, c in enumerate(uniq)}
    return np.array([index[v] for v in raw], dtype=np.int64), uniq


def load_csv(path: str | Path, label_column: str) -> Dataset:
    p = _existing(path, "CSV file")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); is it a CSV file? "
            f"Save it as UTF-8 (or give an NPZ file with source: npz)"
        ) from None
    except csv.Error as e:
        raise DataError(f"{p}: cannot read as CSV ({e})") from None
    if not rows:
        raise DataError(f"{p}: the CSV file is empty")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if label_column not in header:
        from pare.config import did_you_mean

        raise DataError(
            f"{p}: no column named {label_column!r}{did_you_mean(label_column, header)}; "
            f"columns are {', '.join(repr(h) for h in header)}; set data.label_column to one of them"
        )
    li = header.index(label_column)
    features = [h for i, h in enumerate(header) if i != li]
    X = np.empty((len(body), len(features)), dtype=np.float32)
    labels = []
    for r, row in enumerate(body):
        line = r + 2  # 1-based, after the header
        if len(row) != len(header):
            raise DataError(f"{p}, line {line}: {len(row)} values but the header has {len(header)} columns")
        labels.append(row[li].strip())
        values = [v for i, v in enumerate(row) if i != li]
        for c, v in enumerate(values):
            try:
                X[r, c] = float(v)
            except ValueError:
                raise DataError(
                    f"{p}, line {line}, column {features[c]!r}: {v!r} is not a number; "
                    f"features must be numeric (encode categories as numbers first)"
                ) from None
            if not np.isfinite(X[r, c]):
                raise DataError(
                    f"{p}, line {line}, column {features[c]!r}: {v!r} is missing or infinite; "
                    f"clean or impute it before training"
                )
    missing = _missing(labels)
    if missing:
        r = missing[0]
        raise DataError(
            f"{p}, line {r + 2}: the label column {label_column!r} is missing ({labels[r]!r}) on "
            f"{len(missing)} row(s); drop or label those rows"
        )
    y, classes = _encode_labels(labels, str(p))
    return Dataset(name=p.name, X=X, y=y, classes=classes)


def load_npz(path: str | Path) -> Dataset:
    p = _existing(path, "NPZ file")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(
                    f"{p}: missing array(s) {', '.join(missing)}; found {f.files}. "
                    f"Save features as 'X' and labels as 'y' (np.savez(path, X=..., y=...))"
                )
            X, y = f["X"], f["y"]
    except DataError:
        raise
    except Exception as e:  # zip errors, pickled objects, truncated files
        raise DataError(f"{p}: cannot read as NPZ ({e}); write it with numpy.savez") from None
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{p}: X has dtype {X.dtype}, expected numbers")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(
            f"{p}: y has shape {y.shape}, expected one label per sample ({len(X)},); "
            f"store class indices or names, not one-hot rows"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))
        raise DataError(
            f"{p}: y holds {len(bad)} missing or infinite label(s) (first at index {bad[0]}); "
            f"drop or label those samples"
        )
    labels = [str(v) for v in y.tolist()]
    missing = _missing(labels)
    if missing:
        raise DataError(
            f"{p}: y holds {len(missing)} missing label(s) ({labels[missing[0]]!r} at index {missing[0]}); "
            f"drop or label those samples"
        )
    y_enc, classes = _encode_labels(labels, str(p))
    return Dataset(name=p.name, X=X.astype(np.float32), y=y_enc, classes=classes)


def load_image_folder(path: str | Path, image_size: tuple[int, int] | None, channels: int) -> Dataset:
    """One sub-folder per class. Without ``image_size`` all images must share one size."""
    from PIL import Image, UnidentifiedImageError

    root = _existing(path, "image folder", folder=True)
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders found; put each class's images in its own folder")
    mode = "L" if channels == 1 else "RGB"
    images, labels, first = [], [], None
    for ci, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if image_size is not None:
                        im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
                    elif first is None:
                        first = (f, im.size)
                    elif im.size != first[1]:
                        raise DataError(
                            f"{f}: size {im.size[0]}x{im.size[1]} differs from {first[0]} "
                            f"({first[1][0]}x{first[1][1]}); set data.image_size: [height, width] to resize all"
                        )
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f}: cannot read this image ({e}); remove or replace the file") from None
            images.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            labels.append(ci)
    return Dataset(
        name=root.name,
        X=np.stack(images),
        y=np.array(labels, dtype=np.int64),
        classes=[d.name for d in class_dirs],
    )
