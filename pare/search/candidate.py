"""One candidate recipe measured on validation data: what a search trial reports.

The candidate is built exactly as ``pare run`` builds it (``train_baseline``, ``apply_stage``,
the same seeds), so the recipe a search writes reproduces the numbers it reported: ``pare run``
records the same validation metric in ``val_metrics`` and the same artifact in ``size_bytes``.
Test data is not touched here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import pare
from pare.cost import count_flops, count_params, time_calls
from pare.export import ort_session, save_weights
from pare.export.onnx import onnx_runner
from pare.recipes.runner import apply_stage, train_baseline
from pare.registry import techniques
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
    val = task.score(split.val.y.numpy(), task.outputs(model, split.val), classes=split.classes, bootstrap=0)
    quality = val.metrics[task.headline]
    example = task.inputs(split.val.X[:1])
    artifact, runtime = work_dir / "model.safetensors", "torch"
    save_weights(
        model, artifact, metadata={"pare_version": pare.__version__, "stage": name}
    )  # as pare run does
    if last is not None and techniques()[last[0].technique].export is not None:
        stage, info, stage_dir = last
        exported = techniques()[stage.technique].export(model, stage.config, info, stage_dir, example)
        if exported:
            artifact, runtime = Path(exported["artifact"]), exported.get("runtime", "torch")
    if runtime == "onnxruntime":
        run = onnx_runner(ort_session(artifact))
    else:

        def run(x):
            with torch.inference_mode():
                return model(x)

    return {
        "quality": float(quality),
        "metric": task.headline,
        "higher_is_better": task.higher_is_better,
        "size_bytes": artifact.stat().st_size,
        "latency_ms": time_calls(lambda: run(example), warmup=3, repeats=LATENCY_REPEATS)["p50"],
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
