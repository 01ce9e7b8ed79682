"""Cost numbers as pure functions; they know nothing of techniques."""

from pare.cost.memory import TensorMemoryTracker, peak_inference_memory, state_bytes
from pare.cost.profile import count_flops, count_params, latency_table, profile, time_calls, torch_latency

__all__ = [
    "TensorMemoryTracker",
    "peak_inference_memory",
    "state_bytes",
    "count_flops",
    "count_params",
    "latency_table",
    "profile",
    "time_calls",
    "torch_latency",
]
