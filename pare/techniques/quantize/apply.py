"""The ``quantize`` technique: choose layers, quantize, calibrate, fine-tune, and ship."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch
import torch.nn as nn

from pare.config import parse_size, to_dict
from pare.errors import ConfigError, UnsupportedModelError
from pare.export.onnx_lm import STAGE_GRAPH, export_causal_lm
from pare.formats.packed import save_packed
from pare.formats.schemes import WeightSpec, quantize_weight
from pare.io import remove_tree
from pare.models.hf import CausalLM
from pare.progress import console, progress_bar
from pare.registry import register
from pare.selection import layer_options, matches, replace_module, select_layers
from pare.techniques.quantize import graph
from pare.techniques.quantize.calibrated import awq, gptq
from pare.techniques.quantize.config import QuantizeConfig
from pare.techniques.quantize.export import embedding_int8, export_dynamic, export_qdq
from pare.techniques.quantize.layers import ActQuant, QATHook, QuantLayer, merge_all
from pare.techniques.quantize.tied import follow_quantized_heads
from pare.training.blockwise import Offload, find_blocks, layer_by_layer
from pare.training.calibration import BATCH_TOKENS, calibration_batches, group_stats
from pare.training.offload import (
    DiskBlocks,
    PeakRSS,
    block_tensors,
    tensor_bytes,
    tensors_mapped_apart,
    write_blocks,
)
from pare.training.resume import BlockProgress, fingerprint

SUPPORTED = (nn.Linear, nn.Conv2d)


def weight_spec(config: QuantizeConfig, overrides: dict | None = None) -> WeightSpec:
    opts = {
        "scheme": config.scheme,
        "bits": config.weight_bits,
        "symmetric": config.symmetric,
        "granularity": config.granularity,
        "group_size": config.group_size,
    }
    opts.update({k: v for k, v in (overrides or {}).items() if k != "skip"})
    return WeightSpec(
        frac_bits=config.frac_bits,
        range_method=config.weight_range,
        percentile=config.percentile,
        full_range=config.packed,  # int8 graphs keep the balanced grid their kernels expect
        **opts,
    )


def layer_specs(model: nn.Module, config: QuantizeConfig) -> tuple[dict[str, WeightSpec], list[dict]]:
    """Specs for the selected layers (overrides applied, skipped ones dropped) and the layers
    that hold weights but are of a type pare does not quantize."""
    tables = (nn.Embedding,) if config.int8_tables else ()  # so that `exclude` may name a table
    selected = select_layers(
        model, include=config.layers, exclude=config.exclude, types=SUPPORTED + tables, key="layers"
    )
    specs, problems = {}, []
    for name, layer in selected.items():
        if isinstance(layer, tables):
            continue
        opts = layer_options(name, {}, config.overrides)
        if opts.get("skip"):
            continue
        specs[name] = spec = weight_spec(config, opts)
        inputs = layer.weight[0].numel()
        if spec.granularity == "per_group" and inputs % spec.group_size:
            problems.append(
                f"group_size: {spec.group_size} does not divide the {inputs} inputs per channel of layer "
                f"{name!r}; choose a divisor or exclude the layer"
            )
    if problems:
        raise ConfigError(problems)
    unsupported = [
        {"layer": n, "type": type(m).__name__}
        for n, m in model.named_modules()
        if n
        and not isinstance(m, SUPPORTED)
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and not isinstance(m, nn.BatchNorm2d | nn.LayerNorm | nn.BatchNorm1d)
    ]
    return specs, unsupported


def wrap_layers(model: nn.Module, specs: dict[str, WeightSpec], dynamic_bits: int | None = None) -> nn.Module:
    for name, spec in specs.items():
        replace_module(model, name, QuantLayer(model.get_submodule(name), spec, dynamic_bits=dynamic_bits))
    return model


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


@torch.no_grad()
def sensitivity(model: nn.Module, specs: dict[str, WeightSpec], bits: list[int], ctx) -> dict:
    """Validation drop (``ctx.drop``: points, percent for perplexity) when only one layer is
    quantized, per layer and width."""
    base = ctx.metric(model)
    out = {}
    for name, spec in specs.items():
        weight = model.get_submodule(name).weight
        original = weight.detach().clone()
        out[name] = {}
        for b in bits:
            weight.copy_(quantize_weight(original, dataclasses.replace(spec, bits=b)).dequantized)
            out[name][b] = ctx.drop(base, ctx.metric(model))
        weight.copy_(original)
    return out


def _bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


@torch.no_grad()
def allocate_bits(model, specs, sens, mixed, ctx) -> dict[str, int]:
    """Greedy: lower the width of whichever layer loses least accuracy per byte saved, until the
    size budget is met, or while the measured drop of the whole model stays within max_drop."""
    numel = {n: model.get_submodule(n).weight.numel() for n in specs}
    widths = sorted(mixed.bits)
    chosen = {n: widths[-1] for n in specs}
    frozen: set[str] = set()
    base = ctx.metric(model)
    originals = {n: model.get_submodule(n).weight.detach().clone() for n in specs}

    def apply(widths_now):
        for n, b in widths_now.items():
            model.get_submodule(n).weight.copy_(
                quantize_weight(originals[n], dataclasses.replace(specs[n], bits=b)).dequantized
            )

    def size():
        return sum(_bytes(numel[n], b) for n, b in chosen.items())

    try:
        while True:
            if mixed.size_budget_bytes is not None and size() <= mixed.size_budget_bytes:
                break
            moves = []
            for n, b in chosen.items():
                lower = [w for w in widths if w < b]
                if n in frozen or not lower:
                    continue
                nb = lower[-1]
                cost = max(sens[n][nb] - sens[n][b], 0.0) + 1e-6
                moves.append((cost / (_bytes(numel[n], b) - _bytes(numel[n], nb)), n, nb))
            if not moves:
                break
            _, n, nb = min(moves)
            previous = chosen[n]
            chosen[n] = nb
            if mixed.max_drop is not None:
                apply(chosen)
                if ctx.drop(base, ctx.metric(model)) > mixed.max_drop:
                    chosen[n] = previous
                    frozen.add(n)
    finally:
        for n, w in originals.items():
            model.get_submodule(n).weight.copy_(w)
    return chosen


def quantize(model: nn.Module, config: QuantizeConfig, ctx):
    """Quantize weights (and activations): schemes, ranges, static/dynamic/weight-only/QAT, mixed precision."""
    if any(isinstance(m, QuantLayer | ActQuant) for m in model.modules()):
        raise UnsupportedModelError(
            f"{ctx.name}: this model was already quantized by an earlier stage; quantize once per chain, "
            f"or start this stage from an unquantized one (e.g. `from: baseline`)"
        )
    specs, unsupported = layer_specs(model, config)
    info: dict = {
        "mode": config.mode,
        "scheme": config.scheme,
        "bits": config.weight_bits,
        "runtime": "onnxruntime" if config.runs_in_onnxruntime else "torch",
    }
    tables = []  # named before tracing, which loses get_input_embeddings
    if config.int8_tables:
        tables = list(token_tables(model))
        kept = [u["layer"] for u in unsupported if u["type"] == "Embedding" and u["layer"] not in tables]
        unsupported = [u for u in unsupported if u["type"] != "Embedding"]
        if kept:
            info["float_tables"] = kept
            console.print(
                f"  quantize: position/type tables kept float (every token reads them): {', '.join(kept)}"
            )
    if unsupported:
        info["skipped_layers"] = unsupported
        by_type: dict[str, list[str]] = {}
        for u in unsupported:
            by_type.setdefault(u["type"], []).append(u["layer"])
        # one entry per type: an LLM has a norm per block, and the full list is in info
        listed = ", ".join(
            f"{t} {names[0]}" if len(names) == 1 else f"{len(names)} {t} ({names[0]}, ...)"
            for t, names in by_type.items()
        )
        console.print(f"[yellow]  quantize: skipping layers of unsupported types: {listed}[/]")
    if config.folds_batchnorm:
        model = _fold(model, config)
    sens = None
    if config.sensitivity or config.mixed is not None:
        widths = config.mixed.bits if config.mixed is not None else [2, 4, 8]
        sens = sensitivity(model, specs, widths, ctx)
        info["sensitivity"] = {n: {str(b): d for b, d in v.items()} for n, v in sens.items()}
    if config.mixed is not None:
        chosen = allocate_bits(model, specs, sens, config.mixed, ctx)
        specs = {n: dataclasses.replace(s, bits=chosen[n]) for n, s in specs.items()}
    if config.packed and config.max_memory is not None:
        info["method"] = config.method
        batches = calibration_batches(ctx, config)
        folder = ctx.work_dir / "calibration"  # its finished blocks survive an interruption (--resume)
        disk, info["calibrated_error"], info["calibration_memory"] = calibrate_offloaded(
            model, specs, batches, config, folder
        )
        disk.load_all()  # the stage is measured whole
        remove_tree(ctx.out_dir, folder)
    elif config.packed:
        # GPTQ aims each layer at the float model's outputs: keep that model to read them from
        reference = copy.deepcopy(model) if config.method == "gptq" and config.input_drift else None
        model = wrap_layers(model, specs)
        if config.method != "rtn":
            info["method"] = config.method
            batches = calibration_batches(ctx, config)
            info["calibrated_error"] = _calibrate(model, specs, batches, config, reference)
        if config.mode == "qat":
            info["history"] = _qat(model, config, ctx)
    if config.packed:
        # a token table tied to a quantized output layer reads that layer's codes (one copy)
        tied = follow_quantized_heads(model)
        if tied:
            info["tied_heads"] = tied
            console.print(f"  quantize: token tables follow their quantized heads: {tied}")
    elif config.mode == "dynamic":
        model = wrap_layers(model, specs, dynamic_bits=8)
        if config.int8_tables:
            info["embeddings"] = quantize_embeddings(model, tables, config.exclude)
    else:  # static, or 8-bit QAT starting from the static ranges
        model = graph.prepare_static(
            model, specs, graph.observer_factory(config.range_method, config.percentile, config.momentum)
        )
        with torch.no_grad():
            for batch in calibration_batches(ctx, config):
                model(batch)
        graph.finalize(model)
        if config.mode == "qat":
            info["history"] = _qat(model, config, ctx)
        info["activations"] = {
            f"act_quant_{i}": [q.scale, q.zero_point] for i, q in enumerate(graph.act_quants(model))
        }
    info["layers"] = _layer_table(model)
    return model, info


def token_tables(model: nn.Module) -> dict[str, nn.Embedding]:
    """The embedding tables ``embeddings: true`` stores as int8 rows: the token (vocabulary)
    tables. In a Hugging Face model that is what ``get_input_embeddings()`` returns; its position
    and token-type tables stay float, because they are small and every token reads them, so their
    rounding reaches every position (int8 position rows cost MiniLM 4 of 347 queries at rank 1,
    see the README). In other models every ``nn.Embedding`` counts."""
    tables = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    vocab = set()
    for m in model.modules():
        try:
            vocab.add(id(m.get_input_embeddings()))
        except (AttributeError, NotImplementedError):
            pass
    return {n: m for n, m in tables.items() if id(m) in vocab} if vocab else tables


@torch.no_grad()
def quantize_embeddings(model: nn.Module, tables: list[str], exclude: list[str]) -> list[str]:
    """Round the named tables (not excluded) to int8 with one scale per row, in place: the model
    then computes what the exported int8 Gather computes."""
    names = [n for n in tables if not any(matches(n, p) for p in exclude)]
    for name in names:
        m = model.get_submodule(name)
        m.weight.copy_(embedding_int8(m.weight)[2])
    return names


def calibrate_offloaded(model, specs, batches, config: QuantizeConfig, folder: Path, source=None):
    """GPTQ or AWQ (``_calibrate``) with the model's decoder blocks on disk under ``folder``, one
    in memory at a time, within ``config.max_memory`` (``_memory_plan``): one block in float and
    quantized, the method's working copies of one layer, one batch's forward pass through a
    block (measured before the first block is calibrated, and refused if it does not fit), and
    the hidden states between blocks, which go to disk when they do not fit in what is left; the
    weights outside the blocks (token table, head) are in memory only for the whole-model
    passes (``pare.training.offload``). ``source``: a ``TensorFiles`` the blocks start from (the
    model then built on the meta device, only the rest of it in memory); without it the blocks
    in memory are written out first. Layers are wrapped block by block as they are read. Each
    calibrated block is final on disk, and recorded (``pare.training.resume``): called again on
    the same ``folder`` after an interruption, with the same model, options and batches, it
    continues after the last recorded block. Returns the ``DiskBlocks`` (``load_all()`` makes the
    model whole), the per-layer errors and what was planned and measured (bytes)."""
    budget = parse_size(config.max_memory, "max_memory")
    linear = [n for n in specs if isinstance(model.get_submodule(n), nn.Linear)]
    blocks = find_blocks(model, linear)
    if blocks is None:
        raise UnsupportedModelError(
            f"max_memory: calibration with blocks on disk needs the layers in a list of repeated blocks "
            f"(the decoder layers of a language model); none holds the selected layers of this "
            f"{type(model).__name__}. Remove max_memory"
        )
    in_blocks = {n for n in specs if any(n.startswith(b + ".") for b in blocks)}
    drift = config.method == "gptq" and config.input_drift
    copies = 2 if drift else 1
    plan = _memory_plan(model, blocks, [model.get_submodule(n) for n in linear], copies)
    least = max(plan["floor_bytes"], plan["capture_bytes"])
    if least > budget:
        raise ConfigError(
            f"max_memory: {config.max_memory!r} is less than one block needs: "
            f"{_mb(least)} (block {blocks[0]!r}: "
            f"{_mb(plan['block_bytes'])} in float, held with its quantized copy"
            f"{' and the float reference' if drift else ''}, and one layer's working copies "
            f"{_mb(plan['work_bytes'])}; while the inputs are captured, the weights outside the blocks "
            f"{_mb(plan['outside_bytes'])}{' twice' if drift else ''} beside one block); raise max_memory "
            f"to at least {_mb(least)}"
        )

    def check(forward: int) -> None:
        if plan["floor_bytes"] + forward > budget:
            raise ConfigError(
                f"max_memory: {config.max_memory!r} is less than calibration needs: one block "
                f"{_mb(plan['floor_bytes'])} (with its quantized copy and one layer's working copies) "
                f"and its forward pass on a calibration batch, measured at {_mb(forward)} (about "
                f"{BATCH_TOKENS:,} tokens a batch); raise max_memory to at least "
                f"{_mb(plan['floor_bytes'] + forward)}"
            )

    options = {k: v for k, v in to_dict(config).items() if k != "max_memory"}  # the budget changes no code
    options["specs"] = {n: dataclasses.asdict(s) for n, s in specs.items()}
    progress = BlockProgress(
        folder, fingerprint(model, options, batches, [] if source is None else source.where.values())
    )
    done, errors = progress.load()
    # hidden states are never reused (the capture pass recomputes them), nor another calibration's blocks
    for part in ["activations"] + ([] if done else ["float", "quantized", "reference"]):
        remove_tree(folder, folder / part)
    if done:
        console.print(
            f"  {config.method}: resuming after block {done} of {len(blocks)} (saved by an interrupted run)"
        )
    with tensors_mapped_apart(), PeakRSS() as peak:
        if source is None:
            source = write_blocks(model, blocks, folder / "float")
        reference = copy.deepcopy(model) if drift else None  # the blocks are empty now: a small copy
        wrap_layers(model, {n: s for n, s in specs.items() if n not in in_blocks})
        saved = frozenset(blocks[:done])

        def prepare(block: nn.Module, name: str) -> None:
            mine = {n: s for n, s in specs.items() if n.startswith(name + ".")}
            wrap_layers(model, mine)
            if name in saved:  # room for the codes its file holds
                _pin_placeholders(model, mine, config)

        disk = DiskBlocks(model, blocks, folder / "quantized", source, prepare, saved)
        ref_disk = DiskBlocks(reference, blocks, folder / "reference", source) if drift else None
        room = budget - plan["floor_bytes"]  # less the forward pass, once measured
        offload = Offload(
            disk,
            ref_disk,
            spill=folder / "activations",
            room=room,
            done=done,
            finished=lambda n: progress.save(n, errors),
            check=check,
        )
        _calibrate(model, specs, batches, config, reference, offload, errors)
    memory = {
        **plan,
        "max_memory_bytes": budget,
        "activation_bytes": offload.activation_bytes,
        "activations_on_disk": offload.spilling,
        "forward_bytes": offload.forward_bytes,
        # the larger of the two phases: capture (the rest of the model in memory, the first block's
        # inputs gathered: half the activations) and block by block
        "planned_bytes": offload.forward_bytes
        + max(
            plan["capture_bytes"] + offload.activation_bytes // 2,
            plan["floor_bytes"] + (0 if offload.spilling else offload.activation_bytes),
        ),
        "rss_start_bytes": peak.start,
        "peak_rss_bytes": peak.peak,
        "peak_rss_since_start": peak.reset,  # False: the process's lifetime peak
    }
    console.print(
        f"  {config.method}: blocks on disk, {_mb(memory['planned_bytes'])} planned within "
        f"{_mb(budget)} (activations {'on disk' if offload.spilling else 'in memory'}); "
        f"peak RSS {_mb(peak.peak)}, {_mb(peak.peak - (peak.start or 0))} above the start"
    )
    return disk, errors, memory


def _memory_plan(model, blocks, layers, copies: int) -> dict[str, int]:
    """What calibration with blocks on disk holds besides the hidden states and one batch's
    forward pass (measured as calibration starts), in bytes. While the blocks' inputs are
    captured (``capture_bytes``): the tensors outside the blocks and one block, per copy (the
    model, and the float reference for GPTQ's input drift). While each block is calibrated
    (``floor_bytes``), the tensors outside the blocks set aside on disk: the block per copy, its
    quantized weights, and one layer's GPTQ working set, float64: five weight-sized tensors (the
    weight, its transposed copy, the codes, the per-column scales and zero points) and four
    Hessian-sized ones (the statistics' X^T X, GPTQ's permuted copy, its Cholesky factor and the
    inverse, then the inverse's factor)."""
    block_ids = {id(t) for b in blocks for t in block_tensors(model.get_submodule(b)).values()}
    outside = tensor_bytes(
        t for t in {id(t): t for t in block_tensors(model).values()}.values() if id(t) not in block_ids
    )
    block = max(tensor_bytes(block_tensors(model.get_submodule(b)).values()) for b in blocks)
    work = max(8 * 5 * m.weight.numel() + 8 * 4 * m.weight.shape[1] ** 2 for m in layers)
    return {
        "outside_bytes": outside,
        "block_bytes": block,
        "work_bytes": work,
        "capture_bytes": copies * (outside + block),
        "floor_bytes": copies * block + block + work,
    }


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MB"


def _calibrate(
    model, specs, batches, config, reference=None, offload=None, errors=None
) -> dict[str, dict[str, float]]:
    """GPTQ or AWQ codes pinned in each Linear layer (convolutions keep RTN), in the order the
    model runs them: each layer's calibration inputs come from the model with every earlier
    layer already quantized (sequential GPTQ), one block at a time where the model has repeated
    blocks (pare.training.blockwise). Given the float ``reference`` model, GPTQ also corrects
    what those layers changed in the inputs, aiming at the float outputs. Returns each layer's
    output error on the calibration rows against the float layer's output on its float inputs
    (relative mean square), for RTN and for the method, added to ``errors`` (a resumed run's:
    the blocks ``offload`` has done already)."""
    names = [n for n in specs if isinstance(model.get_submodule(n).base, nn.Linear)]
    errors = {} if errors is None else errors
    with progress_bar(f"  {config.method} layer by layer", len(names)) as bar:
        bar.advance(len(errors))
        for group, feed in layer_by_layer(model, names, batches, reference, offload):
            layers = {n: model.get_submodule(n) for n in group}
            for name, st in group_stats(feed, layers).items():
                errors[name] = _calibrate_layer(layers[name], specs[name], st, config, name)
                bar.advance()
    return errors


def _calibrate_layer(layer, spec, st, config, name) -> dict[str, float]:
    """Pin the method's codes in ``layer``; its output error for RTN and for the method."""
    w = layer.base.weight.detach()
    if config.method == "gptq":
        q = gptq(w, st.hessian, spec, damp=config.damp, act_order=config.act_order, name=name, drift=st.drift)
    else:
        q = awq(w, st, spec)
    x = torch.cat(st.sample)
    ref = torch.cat(st.sample_ref or st.sample) @ w.T

    def err(deq):
        return float((x @ deq.T - ref).pow(2).mean() / ref.pow(2).mean().clamp(min=1e-12))

    errors = {"rtn": err(layer.quantized.dequantized), config.method: err(q.dequantized)}
    layer.pin(q)
    return errors


def _pin_placeholders(model, specs, config) -> None:
    """Shapes for pinned codes, so that a resumed run can load the saved ones into them."""
    for name, spec in specs.items():
        layer = model.get_submodule(name)
        if not isinstance(layer.base, nn.Linear):
            continue
        q = quantize_weight(layer.base.weight, spec)
        if config.method == "awq":
            q.params["input_scale"] = torch.ones(layer.base.weight.shape[1])
        layer.pin(q)


def _fold(model, config):
    """Fold BatchNorm into convolutions before quantizing, as the exported graph will be."""
    try:
        return graph.trace(model, f"mode {config.mode!r}")
    except Exception:
        if config.mode == "dynamic":  # dynamic works on the plain module too
            return model
        raise


def _qat(model, config, ctx):
    return ctx.fit(
        model, hooks=[QATHook()], epochs=config.finetune_epochs, lr=config.finetune_lr, patience=None
    )


def _layer_table(model) -> list[dict]:
    rows = []
    for name, layer in quant_layers(model).items():
        w = layer.base.weight.detach()
        q = layer.weight_q
        rows.append(
            {
                "layer": name,
                "type": type(layer.base).__name__,
                "params": w.numel(),
                "scheme": layer.spec.scheme,
                "bits": layer.quantized.bits,
                "bytes": _bytes(w.numel(), layer.quantized.bits),
                "rel_error": float((q - w).norm() / w.norm().clamp(min=1e-12)),
            }
        )
    return rows


def export(
    model: nn.Module, config: QuantizeConfig, info: dict, stage_dir: Path, example: torch.Tensor
) -> dict:
    """The int8 ONNX graph (static, dynamic, 8-bit QAT) or pare's packed weights (the rest)."""
    if config.mode == "dynamic":
        merged = merge_all(copy.deepcopy(model))
        codes = {
            f"{n}.weight": {
                "codes": layer.quantized.codes.numpy(),
                "scale": layer.quantized.params["scale"].numpy(),
            }
            for n, layer in quant_layers(model).items()
        }
        path = stage_dir / "model.int8-dynamic.onnx"
        tables = [f"{n}.weight" for n in info.get("embeddings", [])]
        export_dynamic(merged, example, codes, path, embeddings=tables)
        return {"artifact": path, "runtime": "onnxruntime"}
    if config.runs_in_onnxruntime:
        path = stage_dir / "model.int8.onnx"
        export_qdq(model, example, path)
        return {"artifact": path, "runtime": "onnxruntime"}
    if config.mode == "weight_only" and isinstance(model, CausalLM):
        shipped = _lm_graph(model, config, info, stage_dir)
        if shipped is not None:
            return shipped
    merged = merge_all(copy.deepcopy(model))
    packed = {f"{n}.weight": (layer.quantized, layer.spec) for n, layer in quant_layers(model).items()}
    path = stage_dir / ("model.packed.safetensors" + (".xz" if config.entropy_coding else ""))
    save_packed(merged, packed, path, entropy_coding=config.entropy_coding)
    return {"artifact": path, "runtime": "torch"}


def _lm_graph(model, config: QuantizeConfig, info: dict, stage_dir: Path) -> dict | None:
    """A pretrained causal LM's weight-only stage as ONNX Runtime runs it: MatMulNBits on pare's
    own codes, the KV cache as graph inputs and outputs (``export/onnx_lm``); None, with the
    reason in ``info`` and on the console, where a layer has no such form (pare's packed file
    then ships, run in torch)."""
    lm = model.model
    quantized = {f"{n}.weight": (layer.quantized, layer.spec) for n, layer in quant_layers(lm).items()}
    path = stage_dir / STAGE_GRAPH
    try:
        export_causal_lm(merge_all(copy.deepcopy(lm)), path, quantized, config.accuracy_level)
    except UnsupportedModelError as e:
        info["onnx_error"] = str(e)
        console.print(f"[yellow]  quantize: shipped as pare's packed file, run in torch: {e}[/]")
        return None
    return {"artifact": path, "runtime": "onnxruntime"}


def restore(model: nn.Module, config: QuantizeConfig, info: dict) -> nn.Module:
    """Rebuild the quantized structure for ``--resume`` (weights are loaded afterwards)."""
    specs, _ = layer_specs(model, config)
    bits = {row["layer"]: row["bits"] for row in info.get("layers", [])}
    specs = {n: dataclasses.replace(s, bits=bits.get(n, s.bits)) for n, s in specs.items()}
    if config.folds_batchnorm:
        model = _fold(model, config)
    if config.packed:
        model = wrap_layers(model, specs)
        pinned = (
            specs if config.method != "rtn" else {n: specs[n] for n in info.get("tied_heads", {}).values()}
        )
        _pin_placeholders(model, pinned, config)
        return model
    if config.mode == "dynamic":
        return wrap_layers(model, specs, dynamic_bits=8)  # embedding weights load as saved (rounded)
    gm = graph.prepare_static(model, specs, graph.observer_factory("minmax", 99.99, 0.9))
    for i, q in enumerate(graph.act_quants(gm)):
        q.scale, q.zero_point = info["activations"][f"act_quant_{i}"]
    graph.remove_redundant_relus(gm)
    return gm


register(
    "quantize",
    QuantizeConfig,
    export=export,
    restore=restore,
    search={"mode": ["static", "dynamic", "weight_only"], "bits": [4, 8], "order": 90},
)(quantize)
