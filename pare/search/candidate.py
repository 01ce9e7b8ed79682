"""One candidate recipe measured on validation data: what a search trial reports.

The candidate is built exactly as ``pare run`` builds it (``train_baseline``, ``apply_stage``,
the same seeds), so the recipe a search writes reproduces the numbers it reported: ``pare run``
records the same validation metric in ``val_metrics`` and the same artifact in ``size_bytes``.
Test data is not touched here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pare.cost import count_flops, count_params, torch_latency
from pare.export import onnx_latency, ort_session
from pare.recipes.runner import (
    apply_stage,
    export_stage,
    save_stage_weights,
    train_baseline,
    validation_score,
)
from pare.tasks import get_task

LATENCY_REPEATS = 20


def measure(recipe, split, work_dir: Path, baseline=None, hooks=()) -> dict:
    """Validation headline and cost of the recipe's last stage (or of its baseline)."""
    if baseline is None:
        baseline, _ = train_baseline(recipe, split, hooks=hooks, label="trial baseline")
    models, model, last = {"baseline": baseline}, baseline, None
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, stage in enumerate(recipe.stages):
            source = models[stage.source] if stage.source else model
            stage_dir = work_dir / f"{i + 1:02d}-{stage.name}"
            stage_dir.mkdir(exist_ok=True)
            model, info, _ = apply_stage(
                recipe, stage, source, split, dict(models), stage_dir, f"  {stage.name}"
            )
            models[stage.name], last = model, (stage, info, stage_dir)
        return _measure_model(
            model.eval(), split, work_dir, last, recipe.stages[-1].name if last else "baseline"
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _measure_model(model, split, work_dir: Path, last, name: str) -> dict:
    task = get_task(split.kind)
    quality = validation_score(model, split).metrics[task.headline]
    example = task.inputs(split.val.X[:1])
    artifact, runtime = work_dir / "model.safetensors", "torch"
    save_stage_weights(model, artifact, name)
    exported = None
    if last is not None:
        stage, info, stage_dir = last
        exported = export_stage(stage, model, info, stage_dir, example)
    if exported:
        artifact, runtime = Path(exported["artifact"]), exported.get("runtime", "torch")
    if runtime == "onnxruntime":
        latency = onnx_latency(ort_session(artifact), example, [1], LATENCY_REPEATS)["batch_1"]["p50"]
    else:
        latency = torch_latency(model, example, repeats=LATENCY_REPEATS)["p50"]
    return {
        "quality": float(quality),
        "metric": task.headline,
        "higher_is_better": task.higher_is_better,
        "size_bytes": artifact.stat().st_size,
        "latency_ms": latency,
        "runtime": runtime,
        "flops": count_flops(model, example),
        "params": count_params(model)["params"],
    }


def drop_points(base: float, quality: float, higher_is_better: bool) -> float:
    """How much worse than the baseline: points of an accuracy-like metric (x100), percent of a
    lower-is-better one (perplexity)."""
    if higher_is_better:
        return 100.0 * (base - quality)
    return 100.0 * (quality - base) / base
