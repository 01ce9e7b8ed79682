"""One candidate recipe measured on validation data: what a search trial reports.

The candidate runs through the same pipeline as ``pare run`` (``fold_models``, ``ship``, the
same seeds), so the recipe a search writes reproduces the numbers it reported: ``pare run``
records the same validation metric in ``val_metrics`` and the same artifact in ``size_bytes``.
Test data is not touched here.
"""

from __future__ import annotations

from pathlib import Path

from pare.cost import count_flops, count_params, torch_latency
from pare.evaluate import validation_metrics
from pare.export import onnx_latency, ort_session
from pare.io import remove_tree
from pare.recipes.pipeline import fold_models, ship
from pare.tasks import get_task

LATENCY_REPEATS = 20


def measure(recipe, split, work_dir: Path, baseline=None, hooks=()) -> dict:
    """Validation headline and cost of the recipe's last stage (or of its baseline)."""
    given = None if baseline is None else {"baseline": baseline}

    def folder(index, step):
        return work_dir / f"{index:02d}-{step.name}"

    try:
        *_, last = fold_models(recipe, split, 0, folder, given=given, hooks=hooks)
        return _measure_model(last, split, folder(len(recipe.stages), last.step))
    finally:
        remove_tree(work_dir.parent, work_dir)  # never through a link planted in the search folder


def _measure_model(built, split, folder: Path) -> dict:
    task = get_task(split.kind)
    example = task.inputs(split.val.X[:1])
    artifact = ship(built, folder, example)
    model = built.model
    if artifact.runtime == "onnxruntime":
        latency = onnx_latency(ort_session(artifact.path), example, [1], LATENCY_REPEATS)["batch_1"]["p50"]
    else:
        latency = torch_latency(model, example, repeats=LATENCY_REPEATS)["p50"]
    return {
        "quality": float(validation_metrics(model, split)[task.headline]),
        "metric": task.headline,
        "higher_is_better": task.higher_is_better,
        "size_bytes": artifact.bytes,
        "latency_ms": latency,
        "runtime": artifact.runtime,
        "flops": count_flops(model, example),
        "params": count_params(model)["params"],
    }
