"""Resuming a layer-by-layer calibration from its last finished block.

A calibration with blocks on disk (``pare.training.offload``) already writes each calibrated block
to its own file. ``BlockProgress`` records, after each one, how many blocks are final and the
per-layer results so far, under a fingerprint of everything that decides them: the input model's
weights, the method's options and the calibration data. A run that finds a record with the same
fingerprint continues after those blocks; any other record is discarded, so a changed model,
recipe or data can never reuse stale blocks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from pare.io import atomic_write_json
from pare.progress import console

PROGRESS = "progress.json"


def fingerprint(model: nn.Module, options: dict, batches, files: list[Path] = ()) -> str:
    """SHA-256 of the model's tensors (names, shapes, bytes; tensors on the meta device by name
    and shape, their bytes being in ``files``, named by size and modification time), the
    ``options`` (JSON) and the calibration batches."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    tensors = [*model.state_dict(keep_vars=True).items(), *((str(i), b) for i, b in enumerate(batches))]
    for name, t in tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.device.type != "meta" and t.numel():
            h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    for f in sorted({Path(f) for f in files}):
        stat = f.stat()
        h.update(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()


class BlockProgress:
    """The record of finished blocks in ``folder`` for a calibration with this ``key``
    (``fingerprint``)."""

    def __init__(self, folder: Path, key: str):
        self.path, self.key = Path(folder) / PROGRESS, key

    def load(self) -> tuple[int, dict]:
        """Blocks done and the results so far, or (0, {}) with no usable record (none, another
        calibration's, or unreadable: each said, the work then starting over)."""
        if not self.path.is_file():
            return 0, {}
        try:
            saved = json.loads(self.path.read_text())
            done, results = int(saved["blocks_done"]), dict(saved["results"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            console.print(f"[yellow]  {self.path} is unreadable ({e}); calibrating from the first block[/]")
            return 0, {}
        if saved.get("fingerprint") != self.key:
            console.print(
                f"[yellow]  {self.path} is from another model, options or data; calibrating from the first block[/]"
            )
            return 0, {}
        return done, results

    def save(self, done: int, results: dict) -> None:
        atomic_write_json(self.path, {"fingerprint": self.key, "blocks_done": done, "results": results})
