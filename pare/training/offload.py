"""Blocks on disk while a model is calibrated one block at a time, and activations with them when
they do not fit: what lets layer-by-layer calibration run in a bounded amount of memory.

A block's tensors (parameters and buffers, its wrapped layers' too) live in safetensors files;
between ``load`` and ``release`` they are in memory, otherwise each tensor holds no storage
(``tensor.data`` swapped for an empty one, so every module and tie keeps its tensor objects and
their names). A block starts from a ``TensorFiles`` source (an Hugging Face checkpoint read
tensor by tensor through a memory map, so the model itself can be built on the meta device and
never be whole in memory), or from the block as it was in memory when offloading began
(written out first). A block that a method changed is written back on release. The tensors
outside the blocks (token table, head) are set aside in a file of their own while the blocks
are calibrated one by one, and come back for whole-model passes.

``Activations`` is the list of a block's per-batch hidden states, kept in memory or, past the
budget, in one file per batch read back as each batch is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pare.errors import PareError
from pare.io import remove_tree


def block_tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``block`` by its name in the block (shared ones once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in [
        *block.named_parameters(remove_duplicate=False),
        *block.named_buffers(remove_duplicate=False),
    ]:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def tensor_bytes(tensors) -> int:
    """Bytes the tensors hold (by shape and dtype: meta tensors count as what they will hold)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class TensorFiles:
    """Tensors of a safetensors checkpoint by name: one ``model.safetensors`` or the shards an
    ``model.safetensors.index.json`` lists; read through a memory map, one tensor at a time."""

    def __init__(self, path: Path, prefix: str = ""):
        path = Path(path)
        index = path / "model.safetensors.index.json" if path.is_dir() else None
        if index is not None and index.is_file():
            shards = json.loads(index.read_text())["weight_map"]
            self.where = {k: path / f for k, f in shards.items()}
        else:
            file = path / "model.safetensors" if path.is_dir() else path
            if not file.is_file():
                raise PareError(f"{path}: no model.safetensors (or .index.json) to read weights from")
            with safe_open(str(file), "pt") as f:
                self.where = {k: file for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        self.prefix = prefix  # how the model's names start where the checkpoint's do not

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (model names: ``prefix`` + checkpoint name)."""
        by_file: dict[Path, list[str]] = {}
        for n in names:
            key = n[len(self.prefix) :] if n.startswith(self.prefix) else n
            if key not in self.where:
                raise PareError(f"tensor {key!r} is not in the checkpoint ({len(self.where)} tensors)")
            by_file.setdefault(self.where[key], []).append(n)
        out = {}
        for file, wanted in by_file.items():
            with safe_open(str(file), "pt") as f:
                for n in wanted:
                    out[n] = f.get_tensor(n[len(self.prefix) :] if n.startswith(self.prefix) else n)
        return out


def _empty(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=t.dtype)


def write_blocks(model: nn.Module, blocks: list[str], folder: Path) -> TensorFiles:
    """Write each block's tensors to ``folder`` (one safetensors file per block and an index, as
    a sharded checkpoint) and free them: the blocks of a model in memory become a source."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for b in blocks:
        tensors = block_tensors(model.get_submodule(b))
        save_file(
            {f"{b}.{n}": t.detach().contiguous() for n, t in tensors.items()},
            str(folder / f"{b}.safetensors"),
        )
        index.update({f"{b}.{n}": f"{b}.safetensors" for n in tensors})
        for t in tensors.values():
            t.data = _empty(t)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return TensorFiles(folder)


class DiskBlocks:
    """The tensors of ``blocks`` (module names in ``model``) on disk, one block in memory at a
    time: read from ``source`` until a block changes, then from this object's own files under
    ``folder``. ``prepare(block_module, name)`` (wrapping its layers, say) runs on each block once, now,
    and the prepared block is written out, except the blocks in ``saved``: their files in ``folder``
    (from an interrupted run) are kept and read from then on. The blocks in ``model`` may be on the
    meta device."""

    def __init__(
        self,
        model: nn.Module,
        blocks: list[str],
        folder: Path,
        source: TensorFiles,
        prepare=None,
        saved: frozenset[str] = frozenset(),
    ):
        self.model, self.blocks, self.folder, self.source = model, blocks, Path(folder), source
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: set[str] = set()  # blocks whose current tensors are in our own files
        self.loaded: set[str] = set()
        self.held: set[str] = set()  # kept in memory by the block-by-block phase
        for b in blocks:
            module = model.get_submodule(b).to_empty(device="cpu")  # meta or freed: nothing allocated
            for t in block_tensors(module).values():
                t.data = _empty(t)
            if prepare is not None:
                prepare(self.load(b), b)  # the structure the saved file's tensors go into
                self.release(b, changed=b not in saved)
            if b in saved:
                self.written.add(b)

    def _file(self, block: str) -> Path:
        return self.folder / f"{block}.safetensors"

    def load(self, block: str) -> nn.Module:
        module = self.model.get_submodule(block)
        if block in self.loaded:
            return module
        tensors = block_tensors(module)
        if block in self.written:
            saved = load_file(str(self._file(block)))
        else:  # the source holds what the block was built with
            saved = self.source.read([f"{block}.{n}" for n in tensors])
            saved = {n[len(block) + 1 :]: t for n, t in saved.items()}
        for n, t in tensors.items():
            t.data = saved[n].to(t.dtype)
        self.loaded.add(block)
        return module

    def release(self, block: str, changed: bool = False) -> None:
        """Free ``block``'s tensors (unless held); ``changed``: write them first (a temporary file,
        renamed)."""
        if block not in self.loaded or block in self.held:
            return
        tensors = block_tensors(self.model.get_submodule(block))
        if changed:
            tmp = self._file(block).with_suffix(".tmp")
            save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(tmp))
            os.replace(tmp, self._file(block))
            self.written.add(block)
        for t in tensors.values():
            t.data = _empty(t)
        self.loaded.discard(block)
        return_freed_memory()

    def hold(self, block: str) -> nn.Module:
        """Load ``block`` and keep it in memory through whole-model passes until ``let_go``."""
        self.held.add(block)
        return self.load(block)

    def let_go(self, block: str, changed: bool) -> None:
        self.held.discard(block)
        self.release(block, changed)

    def load_all(self) -> None:
        """Every block back in memory (the model whole again)."""
        for b in self.blocks:
            self.load(b)

    def rest(self) -> dict[str, torch.Tensor]:
        """The model's tensors outside the blocks (token table, final norm, head) by name."""
        inside = {id(t) for b in self.blocks for t in block_tensors(self.model.get_submodule(b)).values()}
        return {n: t for n, t in block_tensors(self.model).items() if id(t) not in inside and not t.is_meta}

    def set_rest_aside(self) -> None:
        """Write the tensors outside the blocks to a file of ours and free them: calibrating one
        block needs none of them (SmolLM2's token table alone is 113 MB, 21 % of the model), a
        whole-model pass needs them all (``restore_rest``)."""
        tensors = self.rest()
        tmp = self.folder / "rest.tmp"
        save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(tmp))
        os.replace(tmp, self.folder / "rest.safetensors")
        for t in tensors.values():
            t.data = _empty(t)
        return_freed_memory()

    def restore_rest(self) -> None:
        saved = load_file(str(self.folder / "rest.safetensors"))
        for n, t in self.rest().items():
            if n in saved:
                t.data = saved[n]

    def streaming(self) -> list:
        """Hooks that load each block before it runs and release it after (whole-model passes with
        one block in memory); the caller removes them."""
        hooks = []
        for b in self.blocks:
            m = self.model.get_submodule(b)
            hooks.append(m.register_forward_pre_hook(lambda mod, args, b=b: void(self.load(b))))
            hooks.append(m.register_forward_hook(lambda mod, args, out, b=b: self.release(b)))
        return hooks


def return_freed_memory() -> None:
    """Hand memory freed inside the heap back to the system (glibc's ``malloc_trim``). glibc
    raises its mmap threshold as large blocks are freed, so a block's tensors, loaded and freed
    in turn, come from the heap and would stay resident: measured on SmolLM2, RSS grew by 1.2 GB
    over the capture pass (8 batches through its 30 blocks) without this, by 22 MB with it."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
SMALL = 128 * 1024  # glibc's initial mmap threshold
LARGE = 32 * 2**20  # the highest glibc's own adjustment raises it to (64-bit)


@contextlib.contextmanager
def tensors_mapped_apart():
    """Within the block, every allocation over 128 KiB gets pages of its own (glibc's mmap
    threshold held at its initial value), handed back to the system the moment it is freed.
    Left alone, glibc raises the threshold as large blocks are freed, so a block's weights,
    activations and GPTQ's working copies come from the heap and what they leave free there
    stays resident (``malloc_trim`` returns only part of it). Measured on SmolLM2 with its blocks
    on disk (``benchmarks/_gptq_on_disk.py``, 2 Intel Xeon threads): peak RSS 835 MiB above the imports with
    glibc's default, 417 MiB with this, for a wall time of 102 s against 151 s (the kernel zeroes
    the new pages each time). Leaving
    the block sets the threshold to glibc's own ceiling (the dynamic adjustment, once a value is
    set, stays off)."""
    if _LIBC is None:
        yield
        return
    _LIBC.mallopt(M_MMAP_THRESHOLD, SMALL)
    try:
        yield
    finally:
        _LIBC.mallopt(M_MMAP_THRESHOLD, LARGE)
        return_freed_memory()


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def void(_) -> None:
    """A hook that must return None (a pre-hook's value would replace the inputs)."""


class Activations:
    """Per-batch tensors, in memory or (``folder`` given) one file per batch, read back on use."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.items: list = []
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def append(self, t: torch.Tensor) -> None:
        if self.folder is None:
            self.items.append(t)
            return
        path = self.folder / f"{len(self.items):05d}.safetensors"
        save_file({"x": t.contiguous()}, str(path))
        self.items.append(path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        return item if self.folder is None else load_file(str(item))["x"]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def remove(self) -> None:
        if self.folder is not None:
            remove_tree(self.folder.parent, self.folder)


class PeakRSS:
    """The process's peak resident memory while the block runs: Linux's high-water mark
    (VmHWM), reset on entry through /proc/self/clear_refs; where that cannot be reset, the
    lifetime peak (``reset`` False says so). Nested measures are right: the reset an inner one
    makes is first read into the ones open around it."""

    _open: list[PeakRSS] = []

    def __enter__(self):
        for outer in PeakRSS._open:
            outer.seen = max(outer.seen, peak_rss())
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.seen = 0
        self.start = rss()
        PeakRSS._open.append(self)
        return self

    def __exit__(self, *exc):
        PeakRSS._open.remove(self)
        self.peak = max(self.seen, peak_rss())
        return False


def _status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int | None:
    """The process's resident memory now (bytes), where /proc tells it."""
    return _status("VmRSS")


def peak_rss() -> int:
    """The process's peak resident memory (bytes): since the last reset, where /proc tells it."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
