"""Layer-by-layer calibration: each layer sees the inputs of the model as changed so far, and a
model with repeated blocks (the decoder layers of a language model) is run one block at a time.

One-shot methods (GPTQ, AWQ; SparseGPT and Wanda work the same way) change layers in the
order the model runs them, each from its inputs in the model with every earlier layer already
changed. Re-running the whole model for every layer costs layers x model passes, which is what
makes that order unaffordable on a 30-block LLM. Here the inputs of the blocks are captured
once (the positional and keyword arguments of every call, per block, so masks and rotary
tables that differ from block to block are kept); then each block runs alone on the hidden
states the block before it produced, once per group of layers inside it and once more for its
outputs. Layers that read the same tensor (q/k/v, gate/up) form one group, since changing one
cannot change another's inputs, and a pass stops as soon as the group has seen its inputs. The
model is run whole for the capture and for layers outside the blocks (an output head). The
result equals running the whole model for every layer.

``layer_by_layer`` yields ``(group, feed)`` in execution order; ``feed(observe)`` runs the
calibration batches and calls ``observe(name, x)`` with every input of each layer of the group
(``observe(name, x, x_ref)`` given a ``reference`` copy of the model: its unchanged inputs,
paired call by call). Whatever the caller does to those layers before asking for the next
group is what later layers see.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pare.errors import UnsupportedModelError
from pare.training.offload import Activations, DiskBlocks, PeakRSS

Observe = Callable[..., None]
Feed = Callable[[Observe], None]


class _Stop(Exception):
    """Raised by a hook once a group has seen its inputs: the rest of the pass is not needed."""


def layer_groups(
    model: nn.Module, names: list[str], batch, streaming: Callable[[], list] = list
) -> tuple[list[list[str]], set[str]]:
    """``names`` in the order one forward pass calls them (modules not called dropped), grouped
    where consecutive layers read the very same tensor; and the layers called more than once."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: calls.append((n, args[0])))
        for n in names
    ]
    run_batches(model, [batch], [*handles, *streaming()])
    counts: dict[str, int] = {}
    for n, _ in calls:
        counts[n] = counts.get(n, 0) + 1
    groups: list[list[str]] = []
    previous = None
    for n, x in calls:
        if any(n in g for g in groups):
            continue
        if groups and x is previous and counts[n] == 1 and all(counts[m] == 1 for m in groups[-1]):
            groups[-1].append(n)
        else:
            groups.append([n])
        previous = x
    return groups, {n for n, c in counts.items() if c > 1}


def execution_order(model: nn.Module, names: list[str], batch) -> list[str]:
    """``names`` in the order one forward pass first calls them."""
    return [n for g in layer_groups(model, names, batch)[0] for n in g]


def run_batches(model: nn.Module, batches, handles=(), reference: nn.Module | None = None) -> None:
    """Forward ``batches`` in eval mode without gradients (through ``reference`` too, after
    ``model``, batch by batch), then remove the hooks."""
    _each(lambda m, b: m(b), [model] if reference is None else [model, reference], batches, handles)


def _each(call, models, items, handles=()) -> None:
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for item in items:
                for i, m in enumerate(models):
                    try:
                        call(m, item[i] if isinstance(item, _Pair) else item)
                    except _Stop:
                        pass
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(models, was_training):
            m.train(mode)


class _Pair(tuple):
    """One item per model (the changed model's and the reference's block inputs)."""


def _hooks(model, reference, group: list[str], observe: Observe, stop: bool) -> list:
    """Hooks that call ``observe(name, x)``, or ``observe(name, x, x_ref)`` pairing the n-th call
    of a layer in ``model`` with the n-th in ``reference`` (which runs after it); with ``stop``
    each pass ends after the group's last layer has its inputs."""
    last = group[-1]

    def done(name):
        if stop and name == last:
            raise _Stop

    def plain(mod, args, name):
        observe(name, args[0])
        done(name)

    pending: dict[str, list[torch.Tensor]] = {n: [] for n in group}

    def mine(mod, args, name):
        pending[name].append(args[0])
        done(name)

    def theirs(mod, args, name):
        observe(name, pending[name].pop(0), args[0])
        done(name)

    hooks = []
    for n in group:
        hook = plain if reference is None else mine
        hooks.append(
            model.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n, h=hook: h(mod, args, n))
        )
        if reference is not None:
            hooks.append(
                reference.get_submodule(n).register_forward_pre_hook(
                    lambda mod, args, n=n: theirs(mod, args, n)
                )
            )
    return hooks


def model_feed(
    model: nn.Module,
    group: list[str],
    batches,
    reference: nn.Module | None = None,
    stop: bool = True,
    streaming: Callable[[], list] = list,
) -> Feed:
    """The inputs of the layers of ``group`` from whole-model passes over ``batches``
    (``streaming``: hooks that bring blocks from disk as they run)."""

    def feed(observe: Observe) -> None:
        hooks = _hooks(model, reference, group, observe, stop)
        run_batches(model, batches, [*hooks, *streaming()], reference)

    return feed


def find_blocks(model: nn.Module, order: list[str]) -> list[str] | None:
    """The repeated blocks the layers of ``order`` run in: the children of the ModuleList or
    Sequential (all of one class, at least two) that hold the most of those layers, provided
    the layers outside them run all before or all after the blocks (never between them) and
    each block's layers run together. None when there is no such container."""
    best, best_count = None, 0
    for cname, container in model.named_modules():
        if not isinstance(container, nn.ModuleList | nn.Sequential) or len(container) < 2:
            continue
        if len({type(c) for c in container}) != 1:
            continue
        prefix = f"{cname}." if cname else ""
        blocks = [f"{prefix}{i}" for i in range(len(container))]
        count = sum(any(n.startswith(b + ".") for b in blocks) for n in order)
        if count > best_count:
            best, best_count = blocks, count
    if best is None:
        return None
    owner = [next((i for i, b in enumerate(best) if n.startswith(b + ".")), None) for n in order]
    inside = [i for i, o in enumerate(owner) if o is not None]
    if any(o is None for o in owner[inside[0] : inside[-1] + 1]):
        return None  # a layer outside the blocks runs between them
    ranks = [owner[i] for i in inside]
    return best if ranks == sorted(ranks) else None


def _capture(
    model: nn.Module,
    blocks: list[str],
    batches,
    stop: bool,
    streaming: Callable[[], list] = list,
    start: int = 0,
) -> tuple[list, list]:
    """Per block, per batch: the (args, kwargs) it was called with, from one whole-model pass
    (with ``stop``, ended once the last block has its arguments: an LLM's output head, a fifth
    of SmolLM2's forward, need not run), the hidden states (the first argument) left out; and
    block ``start``'s hidden states per batch (later blocks take theirs from the block before;
    earlier ones, already calibrated, run as they now are)."""
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    first: list[torch.Tensor] = []

    def record(i, args, kwargs):
        if i == start and args:
            first.append(args[0])
        a, k = ((None, *args[1:]) if args else args), dict(kwargs)
        if calls[i]:  # batches of one shape share their masks and rotary tables: keep one copy
            a, k = _shared(a, calls[i][-1][0]), _shared(k, calls[i][-1][1])
        calls[i].append((a, k))
        if stop and i == len(blocks) - 1:
            raise _Stop

    handles = [
        model.get_submodule(b).register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: record(i, args, kwargs), with_kwargs=True
        )
        for i, b in enumerate(blocks)
    ]
    run_batches(model, batches, [*handles, *streaming()])
    for i, c in enumerate(calls):
        if len(c) != len(batches) or not all(a for a, _ in c):
            raise UnsupportedModelError(
                f"block {blocks[i]!r} ran {len(c)} times for {len(batches)} batches, or without its "
                f"hidden states as the first positional argument; layer-by-layer calibration needs "
                f"each block called once per forward pass as block(hidden_states, ...)"
            )
    return calls, first


def _shared(value, before):
    """``value`` with every tensor equal to the one in the same place of ``before`` replaced by
    that one (the same object: the captured arguments of equal batches held once)."""
    if isinstance(value, torch.Tensor):
        same = (
            isinstance(before, torch.Tensor)
            and before.shape == value.shape
            and before.dtype == value.dtype
            and torch.equal(before, value)
        )
        return before if same else value
    if type(value) in (tuple, list) and type(before) is type(value) and len(value) == len(before):
        return type(value)(_shared(v, b) for v, b in zip(value, before))
    if isinstance(value, dict) and isinstance(before, dict):
        return {k: _shared(v, before.get(k)) for k, v in value.items()}
    return value


def _hidden(out):
    return out[0] if isinstance(out, tuple | list) else out


class _BlockRun:
    """One block run alone on its captured calls (and the reference's block on the reference's),
    batch by batch: the hidden states may be read back from disk (``Activations``)."""

    def __init__(self, model, reference, name, calls, hidden, ref_calls, ref_hidden):
        self.block = model.get_submodule(name)
        self.ref_block = reference.get_submodule(name) if reference is not None else None
        self.models = [self.block] if self.ref_block is None else [self.block, self.ref_block]
        self.calls, self.hidden, self.ref_calls, self.ref_hidden = calls, hidden, ref_calls, ref_hidden

    @property
    def items(self):
        for j, (a, k) in enumerate(self.calls):
            mine = ((self.hidden[j], *a[1:]), k)
            if self.ref_block is None:
                yield mine
            else:
                ra, rk = self.ref_calls[j]
                yield _Pair((mine, ((self.ref_hidden[j], *ra[1:]), rk)))

    @staticmethod
    def _call(m, item):
        return m(*item[0], **item[1])

    def feed(self, group: list[str], local: list[str], stop: bool) -> Feed:
        """``group`` named in the whole model, ``local`` the same layers named in the block."""

        def feed(observe: Observe) -> None:
            named = dict(zip(local, group))
            hooks = _hooks(self.block, self.ref_block, local, lambda n, *x: observe(named[n], *x), stop)
            _each(self._call, self.models, self.items, hooks)

        return feed

    def outputs(self, new_store) -> tuple:
        """The block's outputs (the next block's hidden states), and the reference block's, each
        in a store from ``new_store()`` (a list, or ``Activations`` on disk)."""
        out = {m: new_store() for m in self.models}
        _each(lambda m, item: out[m].append(_hidden(self._call(m, item))), self.models, self.items)
        return out[self.block], out.get(self.ref_block)


@dataclass
class Offload:
    """Blocks on disk (``pare.training.offload``): the model's and the reference's; and the hidden
    states between blocks, which go to files under ``spill`` when the inputs and outputs of a
    block (the reference's too) take more than ``room`` bytes (None: they stay in memory) less
    what one block's forward pass takes, measured once the inputs are captured and passed to
    ``check`` (which may refuse it). The tensors outside the blocks are set aside on disk while
    the blocks are calibrated. The first ``done`` blocks were calibrated before (a resumed run):
    the capture pass runs through them as saved, and calibration starts at the next."""

    blocks: DiskBlocks
    reference: DiskBlocks | None = None
    spill: Path | None = None
    room: int | None = None
    activation_bytes: int = 0  # what one block's inputs and outputs take, set after the capture
    forward_bytes: int = 0  # resident memory one block's forward on the largest batch added
    spilling: bool = False
    stores: int = 0
    done: int = 0  # blocks calibrated by an interrupted run (on disk already): calibration resumes after them
    finished: Callable[[int], None] | None = None  # called with the count of blocks done, as each is saved
    check: Callable[[int], None] | None = None  # called with forward_bytes before any block is calibrated

    def streaming(self) -> list:
        return self.blocks.streaming() + (self.reference.streaming() if self.reference else [])

    def disks(self) -> list[DiskBlocks]:
        return [self.blocks] + ([self.reference] if self.reference else [])

    def measure(self, run: _BlockRun, sizes: list[int]) -> None:
        """Run the block of ``run`` (held in memory) on its largest batch (``sizes``: each batch's
        hidden-state elements) and keep the resident memory that added: attention scores and the
        MLP's hidden layer, which depend on the attention's implementation, so they are measured
        rather than computed (with the mmap threshold held low, each is pages of its own)."""
        largest = max(range(len(sizes)), key=sizes.__getitem__)
        item = next(itertools.islice(run.items, largest, None))
        with PeakRSS() as mem:
            _each(run._call, run.models, [item])
        # where the high-water mark cannot be reset (no /proc), it cannot be measured: 0
        self.forward_bytes = max(0, mem.peak - mem.start) if mem.reset and mem.start else 0
        if self.check is not None:
            self.check(self.forward_bytes)

    def plan(self, hidden: list[torch.Tensor], copies: int) -> None:
        self.activation_bytes = 2 * copies * sum(t.numel() * t.element_size() for t in hidden)
        self.spilling = self.room is not None and self.activation_bytes > self.room - self.forward_bytes

    def store(self) -> Activations:
        self.stores += 1
        return Activations(self.spill / f"{self.stores:05d}" if self.spilling else None)


def layer_by_layer(
    model: nn.Module,
    names: list[str],
    batches,
    reference: nn.Module | None = None,
    offload: Offload | None = None,
) -> Iterator[tuple[list[str], Feed]]:
    """Yield ``(group, feed)`` for the layers ``names`` in execution order; see the module doc.
    With ``offload`` the blocks are read from disk one at a time (streamed through whole-model
    passes, held while their groups are calibrated) and written back once calibrated."""
    probe = batches[0][:1] if isinstance(batches[0], torch.Tensor) else batches[0]  # one row shows the order
    if probe.dim() == 2 and not probe.is_floating_point():
        probe = probe[:, :8]  # and a few of its tokens: an LLM's logits for the whole window weigh 50 MB
    streaming = offload.streaming if offload is not None else list
    groups, repeated = layer_groups(model, names, probe, streaming)
    order = [n for g in groups for n in g]
    stop = not repeated  # a layer called twice per pass needs the whole pass
    blocks = find_blocks(model, order)
    if offload is not None and blocks != offload.blocks.blocks:
        raise UnsupportedModelError(
            f"the layers run outside the blocks {offload.blocks.blocks[0]!r}...: calibration with blocks on "
            f"disk needs every selected layer inside one list of repeated blocks, or before/after them"
        )
    if blocks is None:
        for group in groups:
            yield group, model_feed(model, group, batches, reference, stop)
        return
    owner = {n: next((b for b in blocks if n.startswith(b + ".")), None) for n in order}
    groups = [list(part) for g in groups for _, part in itertools.groupby(g, key=owner.get)]
    inside = [g for g in groups if owner[g[0]] is not None]
    first = groups.index(inside[0])
    for group in groups[:first]:  # before the blocks: changing them changes the blocks' inputs
        yield group, model_feed(model, group, batches, reference, stop, streaming)
    start = offload.done if offload is not None else 0
    calls, hidden = _capture(model, blocks, batches, stop, streaming, start)
    ref_calls, ref_hidden = (
        _capture(reference, blocks, batches, stop, streaming, start)
        if reference is not None
        else (None, None)
    )
    aside = offload is not None and start < len(blocks)  # else a resumed run has every block done
    if aside:
        for disk in offload.disks():
            disk.hold(blocks[start])
        run = _BlockRun(
            model, reference, blocks[start], calls[start], hidden, ref_calls and ref_calls[start], ref_hidden
        )
        offload.measure(run, [t.numel() for t in hidden])
        offload.plan(hidden, 1 if reference is None else 2)
        # the captured inputs go where the outputs will; the rest of the model waits on disk
        hidden = _stored(offload.store(), hidden)
        ref_hidden = ref_hidden and _stored(offload.store(), ref_hidden)
        for disk in offload.disks():
            disk.set_rest_aside()
    for i, block_name in enumerate(blocks[start:], start):
        for disk in offload.disks() if offload is not None else []:
            disk.hold(block_name)
        run = _BlockRun(
            model, reference, block_name, calls[i], hidden, ref_calls and ref_calls[i], ref_hidden
        )
        for group in [g for g in inside if owner[g[0]] == block_name]:
            yield group, run.feed(group, [n[len(block_name) + 1 :] for n in group], stop)
        if offload is None:
            hidden, ref_hidden = run.outputs(list)
            continue
        previous = [hidden, ref_hidden]
        hidden, ref_hidden = run.outputs(offload.store)
        for store in previous:
            if store is not None:
                store.remove()
        offload.blocks.let_go(block_name, changed=True)
        if offload.reference is not None:
            offload.reference.let_go(block_name, changed=False)
        if offload.finished is not None:
            offload.finished(i + 1)
    for disk in offload.disks() if aside else []:
        disk.restore_rest()
    for group in groups[first + len(inside) :]:
        yield group, model_feed(model, group, batches, reference, stop, streaming)


def _stored(store, tensors):
    for t in tensors:
        store.append(t)
    return store
