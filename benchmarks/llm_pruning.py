"""One-shot pruning of a pretrained LLM: SmolLM2-135M at 50 % unstructured and 2:4 sparsity,
magnitude against Wanda and SparseGPT, scored on held-out text against the dense model.

The data and the model are the built-in ``smollm2_pydoc`` recipe's (pydoc topics, whole topics
held out; test windows of 256 tokens), as in ``benchmarks/llm.py``. Every row prunes the 210
projections of the 30 decoder blocks (the head, tied to the token table, stays dense), from 64
calibration windows of the training topics (16k tokens) for Wanda and SparseGPT, layer by layer
with each layer's inputs taken from the model pruned so far. Columns: perplexity and its
increase (paired 95 % interval), KL divergence of next-token distributions and the share of
positions with the same top token, against the dense model; non-zero parameters; the stage's
artifact (bitmask + values, ``model.sparse.safetensors``) against the dense fp32 safetensors;
the mean relative reconstruction error of the pruned layers on their calibration inputs; and
the seconds the stage took. Sparse weights run as dense ones in torch and ONNX Runtime on this
CPU: the rows shrink files, not latency, so no speed is quoted for them. SparseGPT 50 % is then
quantized by GPTQ 4-bit (symmetric, group 64), which keeps its zeros. The peers, llm-compressor's
WandaPruningModifier and SparseGPTModifier (in their own environment, ``.venv-llmcompressor``),
prune the same layers at the same sparsities from the same calibration windows; their weights
are scored here exactly as pare's, their size is the folder llm-compressor saves (the sparse
compression it picks itself).

Structured rows make the model smaller for real: depth pruning drops 20 % of the decoder blocks
(the 6 of 30 that turn the hidden state least on 64 calibration windows, ShortGPT's block
influence), width pruning removes 25 % of every block's MLP neurons (gate/up/down slices) by
their weights' L2 norm or by Wanda's |w| x ||x|| over their down_proj columns on the calibration
windows, and "half depth" drops 15 blocks. Each is measured as pruned and after healing
on HEAL_WINDOWS training windows for one epoch: token-level KD from the dense model (top-64
cache, temperature 1, all weights trained) or LoRA (rank 16 on every projection, merged), and
for depth also QLoRA: the same adapters over a 4-bit base (symmetric groups of 64), rounded to
nearest by the lora stage, or the codes of a GPTQ stage run first (measured as such too). Their
decode tokens/s and prefill ms are measured in torch with the KV cache (transformers, batch 1,
32 new tokens, the default prompts, the models taking turns), the runtime these stages ship in
(a Hugging Face folder with a smaller config).

--quick: the first 2 of the 30 decoder blocks, 4 test windows, 8 calibration and 8 healing
windows, one timing round (a smoke run: every row, no meaningful figures, targets not decided).
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library: put it last on the path
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(HERE)] + [HERE]
import dataclasses  # noqa: E402

import torch  # noqa: E402
from _common import export, parse_args, print_table, print_targets, stage, target, write  # noqa: E402
from llm import (  # noqa: E402
    INT4,
    LLMCOMPRESSOR_VENV,
    MODEL,
    calibration_windows,
    quality,
    run_script,
    smollm2,
    speed,
)

from pare.data.dataset import Part  # noqa: E402
from pare.io import remove_tree  # noqa: E402
from pare.models.hf import load_tokenizer, source  # noqa: E402
from pare.recipes.checkpoint import lm_checkpoint  # noqa: E402
from pare.recipes.schema import TrainConfig  # noqa: E402
from pare.tasks import get_task  # noqa: E402
from pare.techniques.quantize.apply import quant_layers  # noqa: E402

SPARSITY = {
    "unstructured": {"method": "unstructured", "amount": 0.5},
    "2:4": {"method": "n_m", "n": 2, "m": 4},
}
CRITERIA = {"magnitude": "l1", "Wanda": "wanda", "SparseGPT": "sparsegpt"}
HEAL_WINDOWS = 128  # training windows of 256 tokens each healing sees (32k tokens, one epoch)
STRUCTURED = {  # name -> prune stage
    "depth 20 %": {"method": "blocks", "criterion": "cosine", "amount": 0.2},
    "width 75 % MLP by L2": {"method": "ffn", "criterion": "l2", "amount": 0.25},
    "width 75 % MLP by Wanda": {"method": "ffn", "criterion": "wanda", "amount": 0.25},
    "half depth": {"method": "blocks", "criterion": "cosine", "amount": 0.5},
}
HEALING = {  # name -> (technique, config, lr)
    "KD": (
        "distill",
        {"teachers": [{"stage": "baseline"}], "top_k": 64, "temperature": 1.0, "alpha": 1.0},
        5e-5,
    ),
    "LoRA": ("lora", {"rank": 16, "alpha": 32, "layers": ["re:.*_proj$"]}, 1e-3),
    "QLoRA": ("lora", {"rank": 16, "alpha": 32, "layers": ["re:.*_proj$"], "base_bits": 4}, 1e-3),
    # the same adapters over the codes of a GPTQ stage (4-bit, symmetric groups of 64) run first
    "QLoRA (GPTQ base)": ("lora", {"rank": 16, "alpha": 32, "layers": ["re:.*_proj$"]}, 1e-3),
}
HEALED = {
    "depth 20 %": ("KD", "LoRA", "QLoRA", "QLoRA (GPTQ base)"),
    "width 75 % MLP by L2": ("KD",),
    "width 75 % MLP by Wanda": ("KD", "LoRA"),
    "half depth": ("KD",),
}
PEERS = {"Wanda": "wanda", "SparseGPT": "sparsegpt"}  # llm-compressor's modifiers, by pare's label
PEER_MASKS = {"unstructured": "0:0", "2:4": "2:4"}  # llm-compressor's mask_structure per pattern


def main() -> None:
    args = parse_args("llm_pruning")
    _, split, model, part, _ = smollm2(args.quick)
    windows = len(part.X)
    task = get_task("language_model")
    tmp = Path(tempfile.mkdtemp(prefix="pare-llm-pruning-"))
    atexit.register(shutil.rmtree, tmp, True)  # a stage's sparse file at a time
    example = split.train.X[:2]
    dense = sum(p.numel() for p in model.parameters())
    print(f"{MODEL}: {len(model.model.model.layers)} blocks, {windows} test windows")
    base = quality(task, model, part, None)
    rows = [
        {
            "name": "dense fp32",
            "model": MODEL,
            "tool": "pare",
            "runtime": "torch",
            "metrics": {**base["metrics"], "perplexity_increase": 0.0},
            "nonzero_params": dense,
            "size_bytes": dense * 4,  # fp32 safetensors, the tied table once
            "size_ratio": 1.0,
            "reconstruction_error": None,
            "seconds": None,
        }
    ]
    sparse_model = None
    for pattern, sparsity in SPARSITY.items():
        for label, criterion in CRITERIA.items():
            config = {**sparsity, "criterion": criterion, "exclude": ["model.lm_head"]}
            if criterion != "l1":
                config["calibration_samples"] = 8 if args.quick else 64
            t0 = time.perf_counter()
            pruned, info = stage(model, "prune", config, split)
            seconds = time.perf_counter() - t0
            shipped = export(pruned, "prune", config, info, tmp / f"{label}-{pattern}", example)
            size = shipped["artifact"].stat().st_size
            q = quality(task, pruned, part, base["out"])
            metrics = q["metrics"]
            metrics["perplexity_increase"] = metrics["perplexity"] - base["metrics"]["perplexity"]
            errors = info.get("reconstruction_error")
            rows.append(
                {
                    "name": f"{label} {pattern}",
                    "model": MODEL,
                    "tool": "pare",
                    "runtime": "torch (dense kernels)",
                    "metrics": metrics,
                    "nonzero_params": info["nonzero_after"],
                    "size_bytes": size,
                    "size_ratio": dense * 4 / size,
                    "reconstruction_error": statistics.mean(e[criterion] for e in errors.values())
                    if errors
                    else None,
                    "magnitude_reconstruction_error": statistics.mean(e["magnitude"] for e in errors.values())
                    if errors
                    else None,
                    "seconds": seconds,
                }
            )
            print(f"  {label} {pattern}: perplexity {metrics['perplexity']:.2f} ({seconds:.0f} s)")
            if label == "SparseGPT" and pattern == "unstructured":
                sparse_model = pruned
            del pruned
            remove_tree(tmp, tmp / f"{label}-{pattern}")
    not_run = {}
    rows += peer_rows(args, split, model, part, task, base, tmp, dense, not_run)
    rows.append(sparse_gptq_row(args, split, sparse_model, part, task, base, tmp, example, dense))
    rows += structured_rows(args, split, model, part, task, base, dense, rows[0], tmp, example)
    by = {r["name"]: r for r in rows}

    def increase(name):
        return by[name]["metrics"]["perplexity_increase"]

    targets = structured_targets(by)
    memory = lora_memory(args.quick)
    targets.append(
        target(
            "LoRA step memory",
            "pare estimate-memory within ±10 % of the LoRA healing step's measured tensor peak",
            memory["error"],
            abs(memory["error"]) <= 0.10,
        )
    )
    for pattern, share in [("unstructured", 3), ("2:4", 2)]:
        for label in ("Wanda", "SparseGPT"):
            ratio = increase(f"{label} {pattern}") / increase(f"magnitude {pattern}")
            targets.append(
                target(
                    f"{label} vs magnitude, {pattern}",
                    f"{label}'s perplexity increase <= 1/{share} of magnitude's at {pattern}"
                    + (" 50 %" if pattern == "unstructured" else ""),
                    ratio,
                    ratio <= 1 / share,
                )
            )
    print_table(
        rows,
        [
            ("variant", lambda r: r["name"]),
            ("ppl", lambda r: f"{r['metrics']['perplexity']:.2f}"),
            ("increase", lambda r: f"{r['metrics']['perplexity_increase']:+.3f}"),
            ("KL", lambda r: f"{r['metrics'].get('kl_divergence', 0):.4f}"),
            ("same top", lambda r: f"{100 * r['metrics'].get('same_top_token', 1):.1f} %"),
            ("non-zero M", lambda r: f"{r['nonzero_params'] / 1e6:.1f}"),
            ("MB", lambda r: f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "-"),
            (
                "rec. error",
                lambda r: f"{r['reconstruction_error']:.4f}" if r["reconstruction_error"] else "-",
            ),
            (
                "decode tok/s",
                lambda r: f"{r['decode_tokens_per_s']:.1f}" if r.get("decode_tokens_per_s") else "-",
            ),
            ("prefill ms", lambda r: f"{r['prefill_ms']:.0f}" if r.get("prefill_ms") else "-"),
            ("s", lambda r: f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"),
        ],
    )
    print_targets(targets)
    if not_run:
        print("\nnot run here:")
    for what, why in not_run.items():
        print(f"  {what}: {why}")
    write(
        "llm_pruning",
        args,
        rows,
        targets,
        not_run=not_run,
        lora_memory=memory,
        setup={
            "blocks": len(model.model.model.layers),
            "windows": windows,
            "window_tokens": int(part.X.shape[1]),
            "scored_tokens": base["tokens"],
            "threads": torch.get_num_threads(),
            "heal_windows": min(HEAL_WINDOWS, len(split.train)),
        },
    )


def peer_rows(args, split, model, part, task, base, tmp, dense, not_run: dict) -> list[dict]:
    """llm-compressor's WandaPruningModifier and SparseGPTModifier at the same sparsities on the
    same calibration windows, each in a process of its own (``LLMCOMPRESSOR_VENV``); their pruned
    weights scored here like pare's rows, their size the folder llm-compressor saves. What did
    not run goes into ``not_run`` with the reason."""
    python = LLMCOMPRESSOR_VENV / "bin" / "python"
    if not python.exists():
        not_run["llm-compressor"] = (
            f"not installed: {LLMCOMPRESSOR_VENV.name} is missing (make setup creates it)"
        )
        return []
    from safetensors.torch import load_file, save_file

    folder = tmp / "fp32-hf"
    lm_checkpoint(copy.deepcopy(model), load_tokenizer(*source(smollm2_recipe())), folder)
    windows = calibration_windows(
        split, {"mode": "weight_only", "calibration_samples": 8 if args.quick else 64}
    )
    save_file({"ids": torch.cat(windows).contiguous()}, str(tmp / "windows.safetensors"))
    rows = []
    for pattern, mask in PEER_MASKS.items():
        for label, method in PEERS.items():
            name, out = f"{label} {pattern} (llm-compressor)", tmp / f"llmc-{method}-{pattern}"
            spec = {"method": method, "sparsity": 0.5, "mask_structure": mask, "ignore": ["lm_head"]}
            script = [str(python), str(Path(HERE) / "_llmcompressor_prune.py"), str(folder)]
            try:
                done = json.loads(
                    run_script(script + [str(tmp / "windows.safetensors"), json.dumps(spec), str(out)], name)
                )
            except RuntimeError as e:
                not_run[name] = str(e)[-600:]
                continue
            pruned = copy.deepcopy(model)
            loaded = pruned.model.load_state_dict(load_file(str(out / "weights.safetensors")), strict=False)
            if loaded.unexpected_keys:
                raise RuntimeError(
                    f"{name}: weights pare's model does not have: {loaded.unexpected_keys[:5]}"
                )
            row = measured(name, pruned, part, task, base, done["seconds"], dense, tool="llm-compressor")
            row.update(
                runtime="torch (dense kernels)",
                nonzero_params=sum(int((p != 0).sum()) for p in pruned.parameters()),
                size_bytes=done.get("bytes"),
                size_ratio=dense * 4 / done["bytes"] if done.get("bytes") else None,
                peer={k: v for k, v in done.items() if k != "seconds"},
            )
            if "save_error" in done:
                not_run[f"{name}: its compressed folder"] = done["save_error"]
            rows.append(row)
            del pruned
            remove_tree(tmp, out)
    remove_tree(tmp, folder)
    return rows


def measured(name, model, part, task, base, seconds, dense, **extra) -> dict:
    """A row for a stage whose weights are dense: quality against the dense model, its
    parameters, fp32 bytes (the tied table once)."""
    metrics = quality(task, model, part, base["out"])["metrics"]
    metrics["perplexity_increase"] = metrics["perplexity"] - base["metrics"]["perplexity"]
    params = sum(p.numel() for p in model.parameters())
    print(f"  {name}: perplexity {metrics['perplexity']:.2f} ({seconds:.0f} s)")
    return {
        "name": name,
        "model": MODEL,
        "tool": "pare",
        "runtime": "torch",
        "metrics": metrics,
        "nonzero_params": params,
        "size_bytes": params * 4,
        "size_ratio": dense * 4 / (params * 4),
        "reconstruction_error": None,
        "seconds": seconds,
        **extra,
    }


def sparse_gptq_row(args, split, sparse, part, task, base, tmp, example, dense) -> dict:
    """SparseGPT 50 % then GPTQ 4-bit on the same calibration windows: the zeros kept, the file
    the quantize stage ships (4-bit codes; the zeros are not exploited by that format)."""
    q, row = gptq_row(
        "SparseGPT 50 % + GPTQ 4-bit", args, split, sparse, part, task, base, tmp, example, dense
    )
    zeros = kept = 0
    for n, layer in quant_layers(q).items():
        pruned = sparse.get_submodule(n).weight == 0
        zeros += int(pruned.sum())
        kept += int((pruned & (layer.quantized.dequantized == 0)).sum())
    row["nonzero_params"] = sum(int((p != 0).sum()) for p in sparse.parameters())
    row["zeros_kept"] = kept / max(zeros, 1)
    return row


def gptq_row(name, args, split, model, part, task, base, tmp, example, dense):
    """``model`` quantized by GPTQ 4-bit (symmetric groups of 64) on the calibration windows,
    measured with the file the quantize stage ships and in its runtime; the model and the row."""
    config = {**INT4, "method": "gptq", "input_drift": False, "calibration_samples": 8 if args.quick else 64}
    t0 = time.perf_counter()
    q, info = stage(model, "quantize", config, split)
    seconds = time.perf_counter() - t0
    shipped = export(q, "quantize", config, info, tmp / "gptq", example)
    size = sum(f.stat().st_size for f in (tmp / "gptq").rglob("*") if f.is_file())
    row = measured(name, q, part, task, base, seconds, dense)
    row.update(size_bytes=size, size_ratio=dense * 4 / size, runtime=shipped.get("runtime", "torch"))
    remove_tree(tmp, tmp / "gptq")
    return q, row


def _heal_info(info: dict) -> dict:
    keep = ("trainable_share", "adapter_bytes", "teacher_cache_bytes", "base_bits")
    return {k: info[k] for k in keep if info.get(k) is not None}


def structured_rows(args, split, model, part, task, base, dense, dense_row, tmp, example) -> list[dict]:
    """Depth and width pruning, as pruned and healed, then decode speed of each architecture
    (written into its rows and ``dense_row``)."""
    n = min(8 if args.quick else HEAL_WINDOWS, len(split.train))
    order = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(0))[:n]
    heal_split = dataclasses.replace(split, train=Part(split.train.X[order], split.train.y[order]))
    rows, shapes = [], {"dense fp32": model}
    for name, config in STRUCTURED.items():
        config = {**config, "calibration_samples": 8 if args.quick else 64}
        t0 = time.perf_counter()
        pruned, info = stage(model, "prune", config, split)
        seconds = time.perf_counter() - t0
        extra = {"dropped_blocks": info.get("dropped_blocks"), "config_changes": info.get("config_changes")}
        rows.append(measured(name, pruned, part, task, base, seconds, dense, **extra))
        shapes[name] = pruned
        gptq = None
        for heal in HEALED[name]:
            technique, heal_config, lr = HEALING[heal]
            start = pruned
            if "GPTQ" in heal:  # quantized once, measured as the base the adapters heal
                gptq, row = gptq_row(
                    f"{name} + GPTQ 4-bit", args, split, pruned, part, task, base, tmp, example, dense
                )
                rows.append(row)
                start = gptq
            if technique == "lora":
                heal_config = {**heal_config, "finetune_epochs": 1, "finetune_lr": lr}
            else:
                heal_config = {**heal_config, "epochs": 1, "lr": lr}
            train = TrainConfig(batch_size=4, epochs=1, lr=lr, patience=None)
            t0 = time.perf_counter()
            healed, info = stage(start, technique, heal_config, heal_split, train=train, baseline=model)
            seconds = time.perf_counter() - t0
            rows.append(
                measured(
                    f"{name} + {heal}", healed, part, task, base, seconds, dense, heal_info=_heal_info(info)
                )
            )
            del healed
        del gptq
    tokenizer = load_tokenizer(*source(smollm2_recipe()))
    timed = speed(shapes, tokenizer, 1 if args.quick else 3, 32, one_row=set(shapes))
    for r in rows:
        arch = next((a for a in shapes if r["name"] == a or r["name"].startswith(a + " +")), None)
        if arch is not None and r["runtime"] == "torch":  # not the ONNX Runtime rows
            r.update(
                decode_tokens_per_s=timed[arch]["decode_tokens_per_s"], prefill_ms=timed[arch]["prefill_ms"]
            )
    dense_row.update(
        decode_tokens_per_s=timed["dense fp32"]["decode_tokens_per_s"],
        prefill_ms=timed["dense fp32"]["prefill_ms"],
    )
    return rows


def lora_memory(quick: bool) -> dict:
    """``pare estimate-memory`` for one step of the LoRA healing (rank 16 on every projection,
    AdamW, batch 4 x 256 tokens; quick: batch 1 x 32) against the same step run for real here:
    the peak of tensor bytes (weights, batch, gradients, AdamW states, saved activations,
    temporaries) and the growth of the process's peak resident memory."""
    from pare.estimate.training import TrainSetup, estimate_training_memory, measure_training_memory
    from pare.estimate.workloads import hf_workload

    folder, name = source(smollm2_recipe())
    workload = hf_workload(str(Path(folder) / name), seq_len=32 if quick else 256)
    setup = TrainSetup(batch_size=1 if quick else 4, optimizer="adamw", lora_rank=16)
    estimate = estimate_training_memory(workload, setup)
    measured = measure_training_memory(workload, setup)
    out = {
        "setup": {"batch_size": setup.batch_size, "seq_len": 32 if quick else 256, "lora_rank": 16},
        "estimate": estimate["total"],
        "measured_tensors": measured["total"],
        "rss_peak_increase": measured["rss_peak_increase"],
        "components": {k: v for k, v in estimate.items() if isinstance(v, int)},
        "error": estimate["total"] / measured["total"] - 1,
    }
    print(
        f"LoRA step memory: estimate {out['estimate'] / 2**20:.0f} MiB, measured tensors "
        f"{out['measured_tensors'] / 2**20:.0f} MiB ({100 * out['error']:+.1f} %)"
    )
    return out


def smollm2_recipe():
    from pare.recipes import load_recipe

    return load_recipe("smollm2_pydoc").model


def structured_targets(by: dict) -> list[dict]:
    dense = by["dense fp32"]
    depth = by["depth 20 %"]
    out = [
        target(
            "depth 20 % decode",
            "depth pruning 20 % of the blocks: decode >= 1.2x faster than dense (torch, KV cache)",
            depth["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
            depth["decode_tokens_per_s"] / dense["decode_tokens_per_s"] >= 1.2,
        )
    ]
    lost = depth["metrics"]["perplexity_increase"]
    for heal in ("KD", "LoRA"):
        left = by[f"depth 20 % + {heal}"]["metrics"]["perplexity_increase"]
        recovered = 1 - left / lost if lost > 0 else None
        out.append(
            target(
                f"depth 20 % healed by {heal}",
                f"healing by {heal} recovers >= half of depth pruning's perplexity increase",
                recovered if recovered is not None else 0.0,
                recovered is not None and recovered >= 0.5,
            )
        )
    for heal, base in (("QLoRA", "RTN"), ("QLoRA (GPTQ base)", "GPTQ")):
        gap = (
            by[f"depth 20 % + {heal}"]["metrics"]["perplexity"]
            - by["depth 20 % + LoRA"]["metrics"]["perplexity"]
        )
        out.append(
            target(
                f"{heal} vs LoRA",
                f"QLoRA (4-bit {base} base) within 0.5 perplexity of LoRA (float base)",
                gap,
                gap <= 0.5,
            )
        )
    return out


if __name__ == "__main__":
    main()
