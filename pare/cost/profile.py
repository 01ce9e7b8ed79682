"""Cost of a model, measured: parameters, non-zeros, FLOPs, latency, throughput, peak memory.

Latency is wall-clock after warm-up, reported as p50/p95 over repeats, at batch 1 and at a
larger batch; the thread count in force is recorded because it changes every timing.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from pare.cost.memory import peak_inference_memory


def count_params(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "params": int(sum(p.numel() for p in params)),
        "nonzero_params": int(sum(int(torch.count_nonzero(p.detach())) for p in params)),
    }


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` (multiply-add = 2 FLOPs), by torch's counter."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


def time_calls(fn, *, warmup: int = 5, repeats: int = 50) -> dict[str, float]:
    """p50/p95 milliseconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def torch_latency(model: nn.Module, example: torch.Tensor, *, repeats: int = 50) -> dict[str, float]:
    model.eval()
    with torch.inference_mode():
        return time_calls(lambda: model(example), repeats=repeats)


def batch_of(sample: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` rows of real inputs: ``sample`` repeated as often as needed."""
    reps = -(-size // len(sample))
    return sample.repeat(reps, *([1] * (sample.dim() - 1)))[:size]


def latency_table(run_batch, sample: torch.Tensor, batch_sizes, repeats) -> dict:
    """``{"batch_1": {"p50", "p95", "throughput_per_s"}, ...}`` for a runner ``run_batch(x)``,
    timed on batches drawn from ``sample`` (real inputs: token ids must be ids)."""
    out = {}
    for b in batch_sizes:
        x = batch_of(sample, b)
        t = time_calls(lambda x=x: run_batch(x), repeats=repeats)
        out[f"batch_{b}"] = {"p50": t["p50"], "p95": t["p95"], "throughput_per_s": b * 1000 / t["p50"]}
    return out


def profile(model: nn.Module, example: torch.Tensor, *, batch_size: int = 64, repeats: int = 50) -> dict:
    """Torch-side cost of ``model`` on inputs like ``example`` (one or more real samples;
    larger batches repeat them).

    ``latency_ms_p50``/``p95`` are at batch 1; ``throughput_per_s`` is at ``batch_size``.
    """
    model.eval()
    sizes = sorted({1, batch_size})

    def run(x):
        with torch.inference_mode():
            model(x)

    latency = latency_table(run, example, sizes, repeats)
    big = latency[f"batch_{sizes[-1]}"]
    flops = count_flops(model, example[:1])
    return {
        **count_params(model),
        "flops": flops,
        "macs": flops // 2,
        "latency_ms_p50": latency["batch_1"]["p50"],
        "latency_ms_p95": latency["batch_1"]["p95"],
        "throughput_per_s": big["throughput_per_s"],
        "peak_memory_bytes": peak_inference_memory(model, batch_of(example, sizes[-1])),
        "peak_memory_runtime": "torch",
        "latency": {"torch": latency},
        "batch_size": sizes[-1],
        "threads": torch.get_num_threads(),
        "runtime": "torch",
    }
