"""Shared by the benchmarks: the JSON contract of DESIGN.md, a printed table, ratios."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import pare
from pare.config import from_dict
from pare.io import atomic_write_json
from pare.provenance import Clock, machine_info
from pare.registry import techniques


def parse_args(name: str) -> argparse.Namespace:
    """The two options every benchmark takes; ``args.clock`` starts the provenance record."""
    clock = Clock()
    p = argparse.ArgumentParser(description=f"pare benchmark: {name}")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: every row and peer on less data and fewer epochs (targets not decided)",
    )
    p.add_argument("--out", default=f"benchmarks/results/{name}.json", help="where to write the JSON")
    args = p.parse_args()
    args.clock = clock
    return args


def stage(model, technique: str, config: dict, split, train=None, seed=0, baseline=None, out_dir=None):
    """One technique from a recipe-style dict, applied to a copy of ``model`` (``pare.compress``)."""
    config = from_dict(techniques()[technique].config_cls, config)
    return pare.compress(model, config, split, baseline=baseline, train=train, seed=seed, out_dir=out_dir)


def export(model, technique: str, config: dict, info: dict, stage_dir: Path, example) -> dict:
    """What the stage ships (the technique's own export hook), written under ``stage_dir``."""
    tech = techniques()[technique]
    Path(stage_dir).mkdir(parents=True, exist_ok=True)
    return tech.export(model, from_dict(tech.config_cls, config), info, Path(stage_dir), example)


def row(
    name, model, tool, metrics, size_bytes, base_bytes, runtime, latency, base_latency, seconds, **extra
) -> dict:
    """One row of the contract. ``latency``/``base_latency``: {"batch_1": ms, "batch_64": ms} in
    ``runtime``; ratios are against the fp32 baseline in the same runtime, measured in this run."""
    out = {
        "name": name,
        "model": model,
        "tool": tool,
        "metrics": metrics,
        "size_bytes": int(size_bytes),
        "size_ratio": base_bytes / size_bytes,
        "runtime": runtime,
        "latency_ms": {"torch": None, "onnxruntime": None, runtime: latency["batch_64"]},
        "latency_ms_by_batch": {runtime: latency},
        "seconds": seconds,
    }
    for batch, ms in latency.items():
        out[f"latency_ratio_{batch}"] = base_latency[batch] / ms
    out["latency_ratio"] = out["latency_ratio_batch_64"]
    out.update(extra)
    return out


def paired_ratio(fn_a, fn_b, rounds: int, warmup: int = 5) -> float:
    """Median time of ``fn_a`` / median time of ``fn_b``, called alternately in one loop so that
    the drift of a shared 2-vCPU machine hits both alike."""
    times: list[list[float]] = [[], []]
    for i in range(rounds + warmup):
        order = [(0, fn_a), (1, fn_b)] if i % 2 else [(1, fn_b), (0, fn_a)]
        for j, fn in order:
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[j].append(time.perf_counter() - t0)
    return float(np.median(times[0]) / np.median(times[1]))


def target(name: str, goal: str, value: float, met: bool) -> dict:
    return {"name": name, "goal": goal, "value": float(value), "met": bool(met)}


def write(name: str, args: argparse.Namespace, rows: list[dict], targets: list[dict], **extra) -> dict:
    """The JSON of DESIGN.md's contract, with provenance, written atomically to ``args.out``."""
    result = {
        "benchmark": name,
        "machine": machine_info(),
        "provenance": args.clock.provenance(),
        "quick": bool(args.quick),
        "rows": rows,
        "targets": targets,
        **extra,
    }
    atomic_write_json(args.out, result)
    return result


def print_table(rows: list[dict], columns: list[tuple[str, callable]]) -> None:
    cells = [[h for h, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for j, line in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_targets(targets: list[dict]) -> None:
    print()
    for t in targets:
        print(f"[{'met' if t['met'] else 'MISSED'}] {t['name']}: {t['goal']} (value {t['value']:.3f})")


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)
