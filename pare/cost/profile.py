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


def latency_table(run_batch, input_shape, batch_sizes, repeats) -> dict:
    """``{"batch_1": {"p50", "p95", "throughput_per_s"}, ...}`` for a runner ``run_batch(x)``."""
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape)
        t = time_calls(lambda x=x: run_batch(x), repeats=repeats)
        out[f"batch_{b}"] = {"p50": t["p50"], "p95": t["p95"], "throughput_per_s": b * 1000 / t["p50"]}
    return out


def profile(model: nn.Module, example: torch.Tensor, *, batch_size: int = 64, repeats: int = 50) -> dict:
    """Torch-side cost of ``model`` for inputs shaped like ``example`` (a batch of one).

    ``latency_ms_p50``/``p95`` are at batch 1; ``throughput_per_s`` is at ``batch_size``.
    """
    model.eval()
    input_shape = tuple(example.shape[1:])
    sizes = sorted({1, batch_size})

    def run(x):
        with torch.inference_mode():
            model(x)

    latency = latency_table(run, input_shape, sizes, repeats)
    big = latency[f"batch_{sizes[-1]}"]
    flops = count_flops(model, example[:1])
    return {
        **count_params(model),
        "flops": flops,
        "macs": flops // 2,
        "latency_ms_p50": latency["batch_1"]["p50"],
        "latency_ms_p95": latency["batch_1"]["p95"],
        "throughput_per_s": big["throughput_per_s"],
        "peak_memory_bytes": peak_inference_memory(model, torch.randn(sizes[-1], *input_shape)),
        "peak_memory_runtime": "torch",
        "latency": {"torch": latency},
        "batch_size": sizes[-1],
        "threads": torch.get_num_threads(),
        "runtime": "torch",
    }
