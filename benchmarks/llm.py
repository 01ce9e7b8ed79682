"""Pretrained LLM in ONNX Runtime: SmolLM2-135M (from its GGUF file) at 4 bits against fp32,
pare's own codes as MatMulNBits against ONNX Runtime's own quantizer, with a KV cache.

The data and the model are the built-in ``smollm2_pydoc`` recipe's (pydoc topics, whole topics
held out; test windows of 256 tokens). Every row is scored on the same test windows against the
fp32 torch model: perplexity, its increase (with a paired 95 % interval), the KL divergence of
next-token distributions (a lower bound over the baseline's top 32 tokens) and the share of
positions with the same top token. Speed is what a user of LLMs reads: prefill milliseconds for
a prompt and greedy decode tokens per second at batch 1 through the KV cache, and at batch 8 (the
first prompt in 8 rows, every row's tokens counted), every row timed in turn, round after round,
on the same threads; ratios against fp32 in the same runtime. The peak resident memory of
generation (the model loaded, then the first prompt continued at batch 1 and at batch 8) is
measured for each ONNX Runtime row in a process of its own, above that process before the
model. pare's
rows also give the quantize stage's peak resident memory above the process's before it (the
stage's own copy of the fp32 model, 538 MB, included: ``pare.compress`` leaves its input intact).

Rows: fp32 in torch and in ONNX Runtime; pare's RTN 4-bit (symmetric, group 64; the tied head
float) as MatMulNBits at accuracy level 0 (float32 compute) and 4 (int8 compute); ONNX Runtime's
``MatMulNBitsQuantizer`` (RTN, the same scheme, the head left out) on pare's fp32 graph; pare's
GPTQ at 4 bits and RTN and GPTQ at 3 bits (same scheme; 3-bit codes ship in 4-bit containers,
so they are as big and as fast as 4-bit: the rows compare quality); AWQ at 4 and 3 bits (its
per-input scales a ``Mul`` before each MatMulNBits); RTN 4-bit with the tied head
quantized too, at 4 or 8 bits, and the token table following it (GatherBlockQuantized on the
head's codes: the 49,152 x 576 matrix, a fifth of the weights, is in the file once, in 4 or 8
bits; SmolLM2's GGUF stores it at 8 bits); int8 per-channel weight-only as MatMulNBits at
accuracy 0 and 4, against torchao's int8 weight-only in torch; llm-compressor's GPTQModifier
(same scheme, same calibration windows, in a virtual environment of its own since it pins an
older transformers), its compressed-tensors folder read back by pare and scored (its weights
decoded to float in torch, so it is not timed). GPTQ calibrates layer by
layer on 64 training windows (16k tokens) with ``input_drift`` off: the float reference model it
needs runs beside every block and doubles the calibration time. Group 64: the 576 hidden inputs
are 4.5 groups of 128. What is not here yet, and why, is printed and kept in the JSON
(``not_run``).

GPTQ 4-bit also runs with the blocks on disk (``max_memory`` half the fp32 checkpoint's bytes),
read from the fp32 checkpoint into a model built on the meta device, in a process of its own
(``_gptq_on_disk.py``) whose resident memory is measured from the moment its libraries and the
model's code are loaded, before any weight is read; its codes must equal the in-memory row's.

--quick: the first 2 of the 30 decoder blocks, 4 test windows and 8 calibration windows, and
max_memory 300MB for the blocks on disk (a smoke run: every row, no meaningful figures, targets
not decided).
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library: put it last on the path
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(HERE)] + [HERE]
import torch  # noqa: E402
from _common import parse_args, print_table, print_targets, stage, target, write  # noqa: E402

from pare.config import from_dict, parse_size  # noqa: E402
from pare.data.dataset import Part  # noqa: E402
from pare.export.onnx_lm import OrtCausalLM, export_causal_lm  # noqa: E402
from pare.generate import DEFAULT_PROMPTS, greedy  # noqa: E402
from pare.models.hf import CausalLM, load_hf, load_tokenizer, source  # noqa: E402
from pare.recipes import load_recipe  # noqa: E402
from pare.recipes.checkpoint import lm_checkpoint  # noqa: E402
from pare.recipes.pipeline import recipe_model, recipe_splits  # noqa: E402
from pare.tasks import get_task  # noqa: E402
from pare.techniques.quantize.apply import quant_layers  # noqa: E402
from pare.training.offload import PeakRSS, return_freed_memory  # noqa: E402

MODEL = "SmolLM2-135M"
INT4 = {
    "mode": "weight_only",
    "bits": 4,
    "granularity": "per_group",
    "group_size": 64,
    "exclude": ["model.lm_head"],
}
GPTQ = {"method": "gptq", "input_drift": False}
LLMCOMPRESSOR = "int4 GPTQ g64 (llm-compressor GPTQModifier)"
LLAMA_CPP = "Q4_1 GGUF as shipped (llama.cpp)"
# llm-compressor pins transformers <= 5.17: it runs in a virtual environment of its own
LLMCOMPRESSOR_VENV = Path(HERE).parent / ".venv-llmcompressor"
NOT_RUN = {
    "pare GPTQ with input_drift": "the float reference runs beside every block: twice the calibration "
    "time of the rows here",
    "ONNX Runtime GPTQ config (GPTQWeightOnlyQuantConfig)": "runs the whole graph once per distinct MatMul "
    "input ({passes} full passes over the calibration set here, not sequential): left out for time",
    "torchao int4 weight-only": "torchao {torchao} installs beside torch 2.13.0 but its int4 weight-only "
    "has no CPU kernel: the plain and preshuffled layouts need the mslk package (CUDA), plain_int32 "
    "'does not support device cpu', tile_packed_to_4d needs CUDA (its int8 weight-only is a row)",
    "llama.cpp at batch 8, and its generation memory": "the llama-cpp-python wrapper here runs one "
    "sequence (batch 1) in the benchmark's own process",
    "generation memory of the torch rows": "they run in the benchmark's own process, beside every "
    "other row; ONNX Runtime rows are measured each in a process of its own",
}
BATCH = 8  # the throughput rows: the first prompt in this many rows at once


def ort_quantized(fp32_onnx: Path, out: Path) -> None:
    """ONNX Runtime's own RTN (symmetric, block 64) on the fp32 graph; the head MatMul (the tied
    token table, kept float in pare's rows too) left out."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
        logging.WARNING
    )  # a line per node
    model = onnx.load(str(fp32_onnx))
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output]
    q = MatMulNBitsQuantizer(model, bits=4, block_size=64, is_symmetric=True, nodes_to_exclude=head)
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=False)


def torchao_int8_weight_only(model, path: Path):
    """torchao's int8 weight-only (per channel, symmetric) on every Linear but the tied head, run
    in torch; its state dict saved with torch.save: (model, bytes)."""
    import torch.nn as nn
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    q = copy.deepcopy(model).eval()
    head = q.model.get_output_embeddings()
    quantize_(
        q.model, Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, nn.Linear) and m is not head
    )
    torch.save(q.model.state_dict(), path)
    return q, path.stat().st_size


def ort_gptq_passes(fp32_onnx: Path) -> int:
    """How many whole-graph runs ONNX Runtime's GPTQ makes: one per distinct input of a MatMul
    with a constant weight (its quantizer gathers each such input separately)."""
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return len({n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights})


def quality(task, model, part: Part, reference) -> dict:
    out = task.outputs(model, part, batch_size=8, reference=reference)
    ev = task.score(part.y.numpy(), out, bootstrap=1000)
    metrics = dict(ev.metrics)
    if reference is not None:
        metrics.update(task.paired(part.y.numpy(), out, reference, n_boot=1000))
    return {"metrics": metrics, "tokens": ev.details["tokens"], "windows": ev.details["windows"], "out": out}


def speed(runners: dict, tokenizer, rounds: int, new_tokens: int, one_row: set[str]) -> dict:
    """Median prefill ms and decode tokens/s per runner over ``rounds`` x the default prompts,
    and decode tokens/s (every row counted) with the first prompt in ``BATCH`` rows, but for the
    runners in ``one_row``; the runners take turns (so the drift of a shared machine hits all
    alike)."""
    seen: dict[str, dict[str, list]] = {n: {"prefill": [], "decode": [], "batched": []} for n in runners}
    for r in range(rounds + 1):  # round 0 warms every runner up
        for name, model in runners.items() if r % 2 else reversed(runners.items()):
            for prompt in DEFAULT_PROMPTS:
                g = greedy(model, tokenizer, prompt, new_tokens)
                if r:
                    seen[name]["prefill"].append(g["prefill_ms"])
                    seen[name]["decode"].append(g["decode_tokens_per_s"] or float("nan"))
            if name not in one_row:
                g = greedy(model, tokenizer, DEFAULT_PROMPTS[0], new_tokens, batch=BATCH)
                if r:
                    seen[name]["batched"].append(g["decode_tokens_per_s"] or float("nan"))
    return {
        n: {
            "prefill_ms": statistics.median(v["prefill"]),
            "decode_tokens_per_s": statistics.median(v["decode"]),
            "batched_tokens_per_s": statistics.median(v["batched"]) if v["batched"] else None,
        }
        for n, v in seen.items()
    }


def generation_memory(path: Path, tokenizer_dir: Path, new_tokens: int) -> dict:
    """Peak resident memory of loading the ONNX model at ``path`` and generating at batch 1 and
    at ``BATCH``, in a process of its own (``_generation_memory.py``), above that process before
    the model."""
    return json.loads(
        run_script(
            [sys.executable, str(Path(HERE) / "_generation_memory.py"), str(path), str(tokenizer_dir)]
            + [DEFAULT_PROMPTS[0], str(new_tokens), str(BATCH)],
            f"generation memory of {path}",
        )
    )


def calibration_windows(split, config: dict) -> list:
    """The calibration batches pare's GPTQ row draws (``pare.compress``'s seed), for the runs in
    processes of their own to calibrate on the same tokens."""
    from types import SimpleNamespace

    from pare.techniques.quantize.config import QuantizeConfig
    from pare.training.calibration import calibration_batches

    ctx = SimpleNamespace(split=split, seed=0)
    return calibration_batches(ctx, from_dict(QuantizeConfig, config))


def gptq_on_disk(folder: Path, batches: list, config: dict, tmp: Path, in_memory: dict, quick: bool) -> dict:
    """GPTQ (``config``) of the fp32 checkpoint ``folder`` with the blocks on disk, ``max_memory``
    half the checkpoint's bytes, in a process of its own (``_gptq_on_disk.py``), on the
    calibration batches of the in-memory row: its memory figures, and whether its codes equal
    ``in_memory``'s."""
    from safetensors.torch import load_file, save_file

    fp32_bytes = (folder / "model.safetensors").stat().st_size
    # quick: the 2-block model's half is less than its token table alone
    config = {**config, "max_memory": "300MB" if quick else fp32_bytes // 2}
    save_file({str(i): b.contiguous() for i, b in enumerate(batches)}, str(tmp / "batches.safetensors"))
    t0 = time.perf_counter()
    out = json.loads(
        run_script(
            [sys.executable, str(Path(HERE) / "_gptq_on_disk.py"), str(folder), json.dumps(config)]
            + [str(tmp / "batches.safetensors"), str(tmp / "codes.safetensors")],
            "GPTQ with blocks on disk",
        )
    )
    codes = load_file(str(tmp / "codes.safetensors"))
    peak = max(out["peak_rss_bytes"], out["loading_peak_rss_bytes"])
    return {
        **out,
        "fp32_bytes": fp32_bytes,
        "max_memory_bytes": parse_size(config["max_memory"]),
        "peak_above_start_bytes": peak - out["rss_before_weights_bytes"],
        "codes_equal": set(codes) == set(in_memory)
        and all(torch.equal(codes[n], in_memory[n]) for n in codes),
        "layers": len(codes),
        "seconds": time.perf_counter() - t0,
    }


def llmcompressor_gptq(folder: Path, batches: list, tmp: Path):
    """llm-compressor's GPTQModifier (4-bit symmetric, group 64, the head left out) on the fp32
    checkpoint ``folder`` and the same calibration windows, in its own virtual environment
    (``LLMCOMPRESSOR_VENV``, made by ``make setup``); its compressed-tensors folder read back by
    pare (decoded to float): (model, folder bytes, seconds), or the reason it did not run."""
    from safetensors.torch import save_file

    python = LLMCOMPRESSOR_VENV / "bin" / "python"
    if not python.exists():
        return f"not installed: {LLMCOMPRESSOR_VENV.name} is missing (make setup creates it)"
    save_file({"ids": torch.cat(batches).contiguous()}, str(tmp / "windows.safetensors"))
    out = tmp / "llmcompressor-gptq"
    scheme = {"bits": INT4["bits"], "group_size": INT4["group_size"], "ignore": ["lm_head"]}
    args = [str(python), str(Path(HERE) / "_llmcompressor_gptq.py"), str(folder)]
    done = json.loads(
        run_script(args + [str(tmp / "windows.safetensors"), json.dumps(scheme), str(out)], "llm-compressor")
    )
    model = CausalLM(load_hf(out)).eval()
    return model, sum(f.stat().st_size for f in out.glob("*.safetensors")), done


def llama_cpp_gguf(recipe):
    """llama.cpp running the GGUF file the recipe loads (Q4_1 blocks, its tied table Q8_0), as
    shipped: (model, file bytes), or why it did not run. In a quick run too it is the whole
    model (a GGUF file cannot drop blocks), scored on the quick windows."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not installed ({e}); it builds from source (about 5 minutes here)"
    from _llama_cpp import LlamaCppLM

    folder, name = source(recipe.model)
    path = Path(folder) / name
    return CausalLM(LlamaCppLM(path, threads=torch.get_num_threads())), path.stat().st_size


def run_script(args: list[str], what: str) -> str:
    """The last line a helper script prints (its JSON); its error output if it fails."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def smollm2(quick: bool):
    """The ``smollm2_pydoc`` recipe's data and model, and the test windows scored: (recipe,
    split, model, test part, the model's block count). ``quick``: the first 2 of the decoder
    blocks and 4 test windows (the same rows and code paths, smoke-sized)."""
    torch.manual_seed(0)
    recipe = load_recipe("smollm2_pydoc")
    split = recipe_splits(recipe)[0]
    model = recipe_model(recipe, split)
    blocks = len(model.model.model.layers)
    if quick:
        model.model.model.layers = model.model.model.layers[:2]
        model.model.config.num_hidden_layers = 2
    windows = 4 if quick else len(split.test)
    return recipe, split, model, Part(split.test.X[:windows], split.test.y[:windows]), blocks


def main() -> None:
    args = parse_args("llm")
    recipe, split, model, part, blocks = smollm2(args.quick)
    tokenizer = load_tokenizer(*source(recipe.model))
    windows = len(part.X)
    task = get_task("language_model")
    tmp = Path(tempfile.mkdtemp(prefix="pare-llm-"))
    atexit.register(shutil.rmtree, tmp, True)  # 1.8 GB of graphs and checkpoints

    artifacts, seconds, peaks = {}, {}, {}  # peaks: quantize's resident memory above its start
    t0 = time.perf_counter()
    fp32_onnx = tmp / "fp32.onnx"
    artifacts["fp32"] = export_causal_lm(copy.deepcopy(model.model).eval(), fp32_onnx)
    seconds["fp32"] = time.perf_counter() - t0
    calibration = 8 if args.quick else 64
    quantized = {  # artifact key -> (stage config, accuracy levels)
        "rtn": (INT4, (0, 4)),
        "gptq": ({**INT4, **GPTQ, "calibration_samples": calibration}, (0,)),
        "rtn3": ({**INT4, "bits": 3}, (0,)),
        "tied4": ({**INT4, "exclude": []}, (0, 4)),
        "tied8": ({**INT4, "exclude": [], "overrides": {"model.lm_head": {"bits": 8}}}, (4,)),
        "gptq3": ({**INT4, **GPTQ, "bits": 3, "calibration_samples": calibration}, (0,)),
        "awq": ({**INT4, "method": "awq", "calibration_samples": calibration}, (0,)),
        "awq3": ({**INT4, "method": "awq", "bits": 3, "calibration_samples": calibration}, (0,)),
        "int8": ({**INT4, "bits": 8, "granularity": "per_channel"}, (0, 4)),
    }
    for key, (config, levels) in quantized.items():
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            q, info = stage(model, "quantize", config, split)
        peaks[key] = mem.peak - mem.start
        if key.startswith("tied"):  # the stage makes the table follow the quantized head
            assert info["tied_heads"] == {"model.model.embed_tokens": "model.lm_head"}
        if key == "gptq":
            gptq_codes = {n: m.pinned_codes.clone() for n, m in quant_layers(q).items()}
        quantize_s = time.perf_counter() - t0
        for level in levels:
            t0 = time.perf_counter()
            folder = tmp / f"{key}-acc{level}"
            lm_checkpoint(copy.deepcopy(q), tokenizer, folder, "onnx", level)
            artifacts[f"{key}-acc{level}"] = (folder / "model.onnx").stat().st_size
            seconds[f"{key}-acc{level}"] = quantize_s + time.perf_counter() - t0
    fp32_folder = tmp / "fp32-hf"
    lm_checkpoint(copy.deepcopy(model), tokenizer, fp32_folder)
    batches = calibration_windows(split, quantized["gptq"][0])
    on_disk = gptq_on_disk(fp32_folder, batches, quantized["gptq"][0], tmp, gptq_codes, args.quick)
    peer = llmcompressor_gptq(fp32_folder, batches, tmp)
    t0 = time.perf_counter()
    ort_rtn = tmp / "ort-rtn.onnx"
    ort_quantized(fp32_onnx, ort_rtn)
    artifacts["ort-rtn"] = ort_rtn.stat().st_size
    seconds["ort-rtn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torchao_int8, artifacts["torchao-int8"] = torchao_int8_weight_only(model, tmp / "torchao-int8.pt")
    seconds["torchao-int8"] = time.perf_counter() - t0
    facts = {"passes": ort_gptq_passes(fp32_onnx), "torchao": version("torchao")}
    not_run = {what: why.format(**facts) for what, why in NOT_RUN.items()}
    if isinstance(peer, str):
        not_run[LLMCOMPRESSOR] = peer
    else:
        artifacts["llmcompressor"], seconds["llmcompressor"] = peer[1], peer[2]["seconds"]

    def session(path):
        """A session made when asked: each is scored alone and dropped, since a session keeps
        the memory its windows grew (with every variant held while scored, resident memory
        climbed from 10 GB to 24 GB here and the process was killed)."""
        return lambda: CausalLM(OrtCausalLM(path, spinning=False))  # timed in turns: no busy-waiting

    def pare_graph(key):
        return session(tmp / key / "model.onnx")

    def held(m):
        return lambda: m

    variants = {  # name -> (model maker, runtime, tool, artifact key)
        "fp32 (torch)": (held(model.eval()), "torch", "pare", "fp32"),
        "fp32": (session(fp32_onnx), "onnxruntime", "pare", "fp32"),
        "int4 RTN g64, accuracy 0": (pare_graph("rtn-acc0"), "onnxruntime", "pare", "rtn-acc0"),
        "int4 RTN g64, accuracy 4": (pare_graph("rtn-acc4"), "onnxruntime", "pare", "rtn-acc4"),
        "int4 RTN g64 (MatMulNBitsQuantizer)": (session(ort_rtn), "onnxruntime", "onnxruntime", "ort-rtn"),
        "int4 GPTQ g64, accuracy 0": (pare_graph("gptq-acc0"), "onnxruntime", "pare", "gptq-acc0"),
        "int4 AWQ g64, accuracy 0": (pare_graph("awq-acc0"), "onnxruntime", "pare", "awq-acc0"),
        "int3 RTN g64, accuracy 0": (pare_graph("rtn3-acc0"), "onnxruntime", "pare", "rtn3-acc0"),
        "int3 GPTQ g64, accuracy 0": (pare_graph("gptq3-acc0"), "onnxruntime", "pare", "gptq3-acc0"),
        "int3 AWQ g64, accuracy 0": (pare_graph("awq3-acc0"), "onnxruntime", "pare", "awq3-acc0"),
        "int8 per-channel, accuracy 0": (pare_graph("int8-acc0"), "onnxruntime", "pare", "int8-acc0"),
        "int8 per-channel, accuracy 4": (pare_graph("int8-acc4"), "onnxruntime", "pare", "int8-acc4"),
        "int8 weight-only (torchao)": (held(torchao_int8), "torch", "torchao", "torchao-int8"),
        "int4 RTN g64 + int4 tied head, accuracy 0": (
            pare_graph("tied4-acc0"),
            "onnxruntime",
            "pare",
            "tied4-acc0",
        ),
        "int4 RTN g64 + int4 tied head, accuracy 4": (
            pare_graph("tied4-acc4"),
            "onnxruntime",
            "pare",
            "tied4-acc4",
        ),
        "int4 RTN g64 + int8 tied head, accuracy 4": (
            pare_graph("tied8-acc4"),
            "onnxruntime",
            "pare",
            "tied8-acc4",
        ),
    }
    llama_cpp = llama_cpp_gguf(recipe)
    if isinstance(llama_cpp, str):
        not_run[LLAMA_CPP] = llama_cpp
    else:
        variants[LLAMA_CPP] = (held(llama_cpp[0]), "llama.cpp", "llama.cpp", "gguf")
        artifacts["gguf"], seconds["gguf"] = llama_cpp[1], None  # quantized before pare saw it
    if not isinstance(peer, str):  # quality only: its weights are decoded to float in torch
        variants[LLMCOMPRESSOR] = (held(peer[0]), "torch (dequantized)", "llm-compressor", "llmcompressor")
    print(f"{MODEL}: {blocks} blocks{' (quick: first 2)' if args.quick else ''}, {windows} test windows")
    base = quality(task, model, part, None)
    scored = {"fp32 (torch)": base}
    for name, (make, *_) in variants.items():
        if name not in scored:
            scored[name] = quality(task, make(), part, base["out"])
            return_freed_memory()  # the session and its arena are gone: hand the heap back
    new_tokens = 8 if args.quick else 32
    times = speed(
        {n: v[0]() for n, v in variants.items() if n != LLMCOMPRESSOR},
        tokenizer,
        rounds=1 if args.quick else 3,
        new_tokens=new_tokens,
        one_row={LLAMA_CPP},
    )
    graphs = {"fp32": fp32_onnx, "ort-rtn": ort_rtn} | {
        key: tmp / key / "model.onnx" for *_, key in variants.values() if (tmp / key / "model.onnx").is_file()
    }
    if args.quick:  # the smoke run checks the measurement on fp32 and one int4 graph; the full run, all
        graphs = {k: graphs[k] for k in list(graphs)[:2]}
    memory = {key: generation_memory(path, tmp / "rtn-acc0", new_tokens) for key, path in graphs.items()}
    rows = []
    for name, (_, runtime, tool, key) in variants.items():
        q = scored[name]
        metrics = q["metrics"]
        metrics["perplexity_increase"] = metrics["perplexity"] - base["metrics"]["perplexity"]
        # llama.cpp has no fp32 run here: its ratios are against fp32 in ONNX Runtime
        same_runtime = "fp32 (torch)" if runtime == "torch" else "fp32"
        timed = times.get(name)  # None: a peer scored only (its weights run decoded to float)
        rows.append(
            {
                "name": name,
                "model": MODEL,
                "tool": tool,
                "runtime": runtime,
                "metrics": metrics,
                "size_bytes": artifacts[key],
                "size_ratio": artifacts["fp32"] / artifacts[key],
                "prefill_ms": timed and timed["prefill_ms"],
                "decode_tokens_per_s": timed and timed["decode_tokens_per_s"],
                "decode_ratio": timed
                and timed["decode_tokens_per_s"] / times[same_runtime]["decode_tokens_per_s"],
                "prefill_ratio": timed and times[same_runtime]["prefill_ms"] / timed["prefill_ms"],
                "batched_tokens_per_s": timed and timed["batched_tokens_per_s"],
                "batched_ratio": timed
                and timed["batched_tokens_per_s"]
                and timed["batched_tokens_per_s"] / times[same_runtime]["batched_tokens_per_s"],
                # the torch rows share this process: measured for the ONNX Runtime rows only
                "generation_peak_bytes": memory[key]["peak_batch_1_bytes"]
                if key in memory and runtime == "onnxruntime"
                else None,
                "generation_peak_batched_bytes": memory[key]["peak_batch_b_bytes"]
                if key in memory and runtime == "onnxruntime"
                else None,
                "tokens": q["tokens"],
                "seconds": seconds[key],
                "quantize_peak_bytes": peaks.get(key.rsplit("-acc", 1)[0]),
            }
        )
    by = {r["name"]: r for r in rows}

    def increase(name):
        return by[name]["metrics"]["perplexity_increase"]

    int4 = [r for r in rows if r["tool"] == "pare" and r["name"].startswith("int4")]  # all timed
    fastest = max(int4, key=lambda r: r["decode_ratio"])
    smallest = max(int4, key=lambda r: r["size_ratio"])
    targets = [
        target(
            "int4 decode speed",
            f"pare int4 decode tokens/s >= 3x fp32 in ONNX Runtime (best: {fastest['name']})",
            fastest["decode_ratio"],
            fastest["decode_ratio"] >= 3,
        ),
        target(
            "int4 artifact size",
            f"int4 model file >= 5x smaller than fp32 (best: {smallest['name']})",
            smallest["size_ratio"],
            smallest["size_ratio"] >= 5,
        ),
        target(
            "GPTQ vs RTN, 4-bit",
            "GPTQ's perplexity increase <= 1/2 of RTN's (same scheme)",
            increase("int4 GPTQ g64, accuracy 0") / increase("int4 RTN g64, accuracy 0"),
            increase("int4 GPTQ g64, accuracy 0") <= increase("int4 RTN g64, accuracy 0") / 2,
        ),
        target(
            "GPTQ vs RTN, 3-bit",
            "GPTQ's perplexity increase <= 1/3 of RTN's (same scheme)",
            increase("int3 GPTQ g64, accuracy 0") / increase("int3 RTN g64, accuracy 0"),
            increase("int3 GPTQ g64, accuracy 0") <= increase("int3 RTN g64, accuracy 0") / 3,
        ),
        *(
            []
            if isinstance(peer, str)
            else [
                target(
                    "pare GPTQ vs llm-compressor's GPTQ",
                    "pare's GPTQ perplexity increase <= llm-compressor GPTQModifier's (same scheme and windows)",
                    increase("int4 GPTQ g64, accuracy 0") - increase(LLMCOMPRESSOR),
                    increase("int4 GPTQ g64, accuracy 0") <= increase(LLMCOMPRESSOR),
                )
            ]
        ),
        target(
            "pare RTN vs ONNX Runtime's RTN",
            "pare's perplexity increase <= ONNX Runtime quantizer's + 0.05 (same scheme)",
            by["int4 RTN g64, accuracy 0"]["metrics"]["perplexity_increase"]
            - by["int4 RTN g64 (MatMulNBitsQuantizer)"]["metrics"]["perplexity_increase"],
            by["int4 RTN g64, accuracy 0"]["metrics"]["perplexity_increase"]
            <= by["int4 RTN g64 (MatMulNBitsQuantizer)"]["metrics"]["perplexity_increase"] + 0.05,
        ),
        target(
            "GPTQ calibration memory",
            "GPTQ with the blocks on disk honours max_memory (half the fp32 checkpoint's bytes): peak "
            "RSS above the process before any weight was read <= max_memory (value: peak / max_memory)",
            on_disk["peak_above_start_bytes"] / on_disk["max_memory_bytes"],
            on_disk["peak_above_start_bytes"] <= on_disk["max_memory_bytes"],
        ),
    ]
    print_table(
        rows,
        [
            ("variant", lambda r: r["name"]),
            ("runtime", lambda r: r["runtime"]),
            ("ppl", lambda r: f"{r['metrics']['perplexity']:.2f}"),
            ("increase", lambda r: f"{r['metrics']['perplexity_increase']:+.3f}"),
            ("KL", lambda r: f"{r['metrics'].get('kl_divergence', 0):.4f}"),
            ("same top", lambda r: f"{100 * r['metrics'].get('same_top_token', 1):.1f} %"),
            ("MB", lambda r: f"{r['size_bytes'] / 1e6:.1f}"),
            ("prefill ms", lambda r: f"{r['prefill_ms']:.0f}" if r["prefill_ms"] else "-"),
            ("decode tok/s", lambda r: f"{r['decode_tokens_per_s']:.1f}" if r["prefill_ms"] else "-"),
            ("decode x", lambda r: f"{r['decode_ratio']:.2f}" if r["prefill_ms"] else "-"),
            (
                f"b{BATCH} tok/s",
                lambda r: f"{r['batched_tokens_per_s']:.1f}" if r["batched_tokens_per_s"] else "-",
            ),
            (
                "gen MB",
                lambda r: f"{r['generation_peak_bytes'] / 1e6:.0f}" if r["generation_peak_bytes"] else "-",
            ),
            ("s", lambda r: f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"),
            (
                "peak MB",
                lambda r: f"{r['quantize_peak_bytes'] / 1e6:.0f}" if r["quantize_peak_bytes"] else "-",
            ),
        ],
    )
    print(
        f"\nGPTQ with blocks on disk: peak RSS {on_disk['peak_above_start_bytes'] / 2**20:.0f} MiB above "
        f"the process before weights, planned {on_disk['planned_bytes'] / 2**20:.0f} MiB, max_memory "
        f"{on_disk['max_memory_bytes'] / 2**20:.0f} MiB, activations "
        f"{'on disk' if on_disk['activations_on_disk'] else 'in memory'}, codes equal: {on_disk['codes_equal']}"
    )
    print_targets(targets)
    print("\nnot run here:")
    for what, why in not_run.items():
        print(f"  {what}: {why}")
    write(
        "llm",
        args,
        rows,
        targets,
        not_run=not_run,
        calibration_memory=on_disk,
        setup={
            "blocks": 2 if args.quick else blocks,
            "windows": windows,
            "window_tokens": int(part.X.shape[1]),
            "scored_tokens": base["tokens"],
            "prompts": list(DEFAULT_PROMPTS),
            "new_tokens": new_tokens,
            "batch": BATCH,
            "threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
