"""Atomic writes: an artifact is either the old file or the complete new one, never half of it."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays reach results through metrics; write them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_predictions(stage_dir: str | Path, folds: list[tuple]) -> Path:
    """Each fold's test labels and class probabilities, ``[(y, proba), ...]``, to predictions.npz."""
    import numpy as np

    arrays = {}
    for i, (y, proba) in enumerate(folds):
        arrays[f"y_{i}"], arrays[f"proba_{i}"] = y, proba

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, **arrays)

    return atomic_write(Path(stage_dir) / "predictions.npz", write)


def load_predictions(stage_dir: str | Path) -> list[tuple] | None:
    """What ``save_predictions`` wrote, or None when the stage has no predictions file."""
    import numpy as np

    path = Path(stage_dir) / "predictions.npz"
    if not path.exists():
        return None
    with np.load(path) as f:
        n = len([k for k in f.files if k.startswith("y_")])
        return [(f[f"y_{i}"], f[f"proba_{i}"]) for i in range(n)]
