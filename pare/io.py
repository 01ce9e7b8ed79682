"""Files on disk: atomic writes (an artifact is either the old file or the complete new one,
never half of it), paths held inside the run folder, content digests that ``--resume`` checks."""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pare.errors import PareError

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


NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def name_problem(name: object, key: str) -> str | None:
    """Why ``name`` cannot name a folder pare creates (a run or a stage), or None. A plain name
    can never climb out of its parent: no separators, no ``..``, not empty, at most 64 characters."""
    if isinstance(name, str) and NAME_RE.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{key}: {name!r} is not a plain name; use 1 to 64 letters, digits, '-', '_' or '.' "
        f"(starting with a letter, digit or '_', no '..', no '/')"
    )


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, after checking that it lies inside ``root`` (symbolic links followed):
    every path pare writes into a run folder, or deletes from it, passes through here first."""
    base, target = Path(root).resolve(), Path(path).resolve()
    if target != base and base not in target.parents:
        raise PareError(f"refusing to touch {str(path)!r}: it lies outside the run folder {str(base)!r}")
    return target


def remove_tree(root: str | Path, path: str | Path) -> None:
    """Delete the folder or file ``path`` (if it exists) only after ``inside`` has placed it in ``root``."""
    target = inside(root, path)
    if target == Path(root).resolve():
        raise ValueError(f"remove_tree: refusing to delete the run folder {str(target)!r} itself")
    if Path(path).is_symlink():  # a link placed in the folder: remove the link, never its target
        Path(path).unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def digest(path: str | Path) -> dict:
    """Size and SHA-256 of a file, as results.json records every artifact."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def folder_digests(folder: str | Path) -> dict[str, dict]:
    """``digest`` of every file under ``folder``, keyed by its path relative to the folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays reach results through metrics; write them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_results(path: str | Path) -> dict:
    """A run's results.json, checked to have the contract's shape; a damaged file is named."""
    path = Path(path)
    if not path.is_file():
        raise PareError(f"{path} does not exist; give the --out folder of a `pare run`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PareError(
            f"{path} is damaged ({type(e).__name__}: {e}); re-run the recipe with --overwrite"
        ) from None
    shape = {"recipe": dict, "task": dict, "stages": list}
    wrong = [k for k, t in shape.items() if not isinstance(data, dict) or not isinstance(data.get(k), t)]
    if not wrong:
        wrong = [
            f"stages[{i}]" for i, s in enumerate(data["stages"]) if not isinstance(s, dict) or "name" not in s
        ]
    if wrong:
        found = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(data)[:8]}"
        raise PareError(
            f"{path} is damaged or not a pare results file: {', '.join(wrong)} missing or of the wrong "
            f"type (found {found}); re-run the recipe with --overwrite"
        )
    return data


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
    try:
        with np.load(path, allow_pickle=False) as f:
            n = len([k for k in f.files if k.startswith("y_")])
            return [(f[f"y_{i}"], f[f"proba_{i}"]) for i in range(n)]
    except Exception as e:  # truncated or replaced: zip and key errors
        raise PareError(
            f"{path} is damaged ({type(e).__name__}: {e}); re-run the recipe with --resume to rebuild that stage"
        ) from None
