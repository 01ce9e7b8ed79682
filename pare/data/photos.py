"""Real photographs without labels: the samples that ship with scikit-image, scikit-learn and
matplotlib, cut into deterministic crops and flips. What an ImageNet head's fidelity is measured
on (top-1/top-5 agreement with the fp32 model, KL divergence): no download, the same images on
every machine."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pare.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# scikit-image's colour photographs that its wheel carries (others are fetched on first use)
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
# (left, top) of a crop as fractions of the slack, and its side as a fraction of the short side
VIEWS = (
    (0.5, 0.5, 1.0),
    (0.5, 0.5, 0.75),
    (0.0, 0.0, 0.8),
    (1.0, 0.0, 0.8),
    (0.0, 1.0, 0.8),
    (1.0, 1.0, 0.8),
)


def photographs() -> dict[str, np.ndarray]:
    """``{name: RGB uint8 (H, W, 3)}`` of every sample photograph the installed libraries ship."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    photos = {name.rsplit("/", 1)[-1].split(".")[0]: img for name, img in zip(sk.filenames, sk.images)}
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    try:
        from skimage import data
    except ImportError:  # scikit-learn's and matplotlib's photographs remain
        return photos
    for name in SKIMAGE:
        photos[name] = np.asarray(getattr(data, name)())[..., :3]
    return photos


def views(photo: np.ndarray, size: int) -> list[np.ndarray]:
    """Deterministic crops of ``photo`` (the centre, a tighter centre, four corners) and their
    mirror images, each resized to ``size`` × ``size``: (size, size, 3) uint8 arrays."""
    h, w = photo.shape[:2]
    out = []
    for fx, fy, scale in VIEWS:
        side = int(min(h, w) * scale)
        left, top = int((w - side) * fx), int((h - side) * fy)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crop = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        out += [crop, crop[:, ::-1]]
    return out


def photo_batch(size: int = 224, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Views of the sample photographs as an ImageNet-normalised float32 batch (N, 3, size, size),
    and which photograph each row comes from. ``names``: a subset of the photographs."""
    photos = photographs()
    unknown = sorted(set(names or ()) - set(photos))
    if unknown:
        raise DataError(f"no sample photograph named {unknown}; available: {', '.join(sorted(photos))}")
    rows, sources = [], []
    for name in names or sorted(photos):
        for view in views(photos[name], size):
            rows.append(view)
            sources.append(name)
    x = (np.stack(rows).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), sources
