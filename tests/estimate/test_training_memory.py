"""Training-memory estimator: simulated on fake tensors, checked against the same step run for
real (tensor bytes counted as they are allocated, and the process's resident memory)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.cli import main
from pare.errors import ConfigError, UnsupportedModelError
from pare.estimate.training import TrainSetup, Workload, estimate_training_memory, measure_training_memory
from pare.estimate.workloads import hf_workload, recipe_workload
from pare.recipes import load_recipe

GPT2 = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "vocab_size": 500,
    "n_positions": 64,
}


def mlp_workload(width=512, depth=3):
    def build():
        layers = [nn.Linear(256, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.GELU()]
        return nn.Sequential(*layers, nn.Linear(width, 10))

    return Workload(
        "mlp", build, lambda n: (torch.randn(n, 256), torch.randint(0, 10, (n,))), F.cross_entropy
    )


def params_of(w):
    return sum(p.numel() for p in w.build().parameters())


@pytest.mark.parametrize(
    "setup",
    [
        TrainSetup(batch_size=128, optimizer="adam"),
        TrainSetup(batch_size=128, optimizer="sgd"),
        TrainSetup(batch_size=128, checkpointing=True),
        TrainSetup(batch_size=128, lora_rank=8),
    ],
)
def test_estimate_matches_the_real_step(setup):
    w = mlp_workload()
    est = estimate_training_memory(w, setup)
    real = measure_training_memory(w, setup)
    assert est["total"] == pytest.approx(real["total"], rel=0.02)
    for key in ("weights", "gradients", "optimizer_states", "activations"):
        assert est[key] == pytest.approx(real[key], rel=0.02), key


def test_components_follow_the_optimizer_and_lora():
    w = mlp_workload()
    n = params_of(w)
    adam = estimate_training_memory(w, TrainSetup(batch_size=64, optimizer="adam"))
    sgd = estimate_training_memory(w, TrainSetup(batch_size=64, optimizer="sgd"))
    lora = estimate_training_memory(w, TrainSetup(batch_size=64, lora_rank=4))
    assert adam["weights"] == 4 * n and adam["gradients"] == 4 * n
    assert adam["optimizer_states"] >= 8 * n  # exp_avg and exp_avg_sq (+ step counters)
    assert 4 * n <= sgd["optimizer_states"] < 5 * n  # one momentum buffer
    assert lora["trainable_params"] < 0.2 * n and lora["gradients"] == 4 * lora["trainable_params"]
    assert lora["total"] < adam["total"]


def test_checkpointing_saves_activations_of_a_zoo_gpt():
    w = recipe_workload(load_recipe("gpt_pydoc"), seq_len=64)
    plain = estimate_training_memory(w, TrainSetup(batch_size=16))
    ckpt = estimate_training_memory(w, TrainSetup(batch_size=16, checkpointing=True))
    assert ckpt["activations"] < 0.5 * plain["activations"]
    assert ckpt["total"] < plain["total"]


def test_kv_cache_line_equals_the_cache_a_real_gpt2_keeps(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GPT2))
    w = hf_workload(str(path), seq_len=32)
    est = estimate_training_memory(w, TrainSetup(batch_size=3), kv_cache=True)
    model = w.build().model.eval()
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, 500, (3, 32)), use_cache=True).past_key_values
    layers = [cache.layers[i] for i in range(len(cache.layers))]
    real = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    assert est["kv_cache_inference"] == real


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "bertt"}))
    with pytest.raises(UnsupportedModelError, match="'bertt'.*did you mean 'bert'"):
        hf_workload(str(bad))
    flat = Workload(
        "flat", lambda: nn.Linear(4, 2), lambda n: (torch.randn(n, 4), torch.zeros(n).long()), F.cross_entropy
    )
    with pytest.raises(UnsupportedModelError, match="no ModuleList or Sequential"):
        estimate_training_memory(flat, TrainSetup(checkpointing=True))
    with pytest.raises(ConfigError, match="not a causal language model"):
        estimate_training_memory(mlp_workload(), TrainSetup(batch_size=2), kv_cache=True)


def test_cli_prints_the_table():
    from pare.progress import console

    with console.capture() as captured:
        assert (
            main(["estimate-memory", "default", "--batch-size", "64", "--optimizer", "sgd", "--measure"]) == 0
        )
    out = captured.get()
    assert "optimizer states" in out and "peak of a training step" in out and "measured" in out


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="resident-memory peak needs Linux /proc"
)
def test_estimate_within_ten_percent_of_resident_memory(tmp_path):
    """Independent of pare's own counting: the process's peak resident memory (fresh process)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GPT2, "n_layer": 4, "n_embd": 256, "vocab_size": 8000, "n_positions": 256}))
    code = (
        "import json,sys; from pare.estimate.training import *; from pare.estimate.workloads import hf_workload;"
        "w=hf_workload(sys.argv[1], seq_len=256); s=TrainSetup(batch_size=8);"
        "m=measure_training_memory(w,s); e=estimate_training_memory(w,s);"
        "print(json.dumps([e['total'], m['rss_peak_increase']]))"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    est, rss = json.loads(out.stdout.strip().splitlines()[-1])
    assert est > 300e6  # large enough that allocator noise does not decide
    assert abs(est / rss - 1) <= 0.10
