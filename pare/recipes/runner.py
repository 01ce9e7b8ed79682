"""The stage loop behind ``pare run``, and ``--resume``: every step of the recipe (the baseline
first) built, shipped and measured the same way (``pipeline``), with results written after
every stage.

Layout of an output folder::

    results.json                  the contract (see README): recipe, task, one record per stage
    report.md, report.html        the report; plots/*.png
    stages/00-baseline/           model.safetensors, model.onnx, predictions.npz
    stages/01-<name>/ ...         (under cross-validation: fold0/, fold1/, ... one folder per fold)

Stages are chained: each starts from a copy of the previous stage's model, so the input model
and every earlier artifact stay as they were. ``resume`` reuses finished stages whose recipe and
configuration are unchanged and re-runs from the first one that differs.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pare.cost.artifact import stage_cost
from pare.errors import ConfigError
from pare.io import (
    atomic_write_json,
    digest,
    folder_digests,
    inside,
    load_predictions,
    read_results,
    remove_tree,
    save_predictions,
)
from pare.lock import run_lock
from pare.progress import console, status
from pare.provenance import Clock, machine_info
from pare.recipes.context import WORK
from pare.recipes.pipeline import (
    Built,
    aggregate,
    compare,
    fold_dir,
    fold_models,
    generations,
    recipe_splits,
    ship,
    stage_dir,
    steps,
    test_quality,
)
from pare.recipes.schema import Recipe, load_recipe
from pare.reporting import write_report
from pare.tasks import get_task
from pare.training.distributed import world
from pare.version import __version__

RESULTS = "results.json"


def run(
    recipe: Recipe | str | Path | dict | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
) -> dict:
    """Run a recipe end to end; returns the results (also written to ``out/results.json``).
    The folder is locked for the run: a second run into it is refused while this one lasts."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out or Path("runs") / recipe.name)
    if world()[0] > 0:  # under torchrun every process trains; rank 0 alone keeps the results
        out, report = Path(tempfile.mkdtemp(prefix=f"pare-rank{world()[0]}-")), False
    check_out(out)
    with run_lock(out, say=lambda m: console.print(f"[yellow]{m}[/]")):
        return _run(recipe, out, resume=resume, overwrite=overwrite, report=report)


def check_out(out: Path) -> None:
    """Refuse an output folder that cannot be one before anything is trained or written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a file, not a folder; choose a folder for the run")
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: cannot write into {str(probe)!r}; choose a folder you can write to")


def _run(recipe: Recipe, out: Path, *, resume: bool, overwrite: bool, report: bool) -> dict:
    clock = Clock()
    previous = _previous_stages(out, recipe, resume=resume, overwrite=overwrite)
    splits = recipe_splits(recipe)
    task = get_task(splits[0].kind)
    results = _header(recipe, splits, task)
    folds = f", {len(splits)}-fold CV" if len(splits) > 1 else ""
    console.print(
        f"[bold]pare run[/] {recipe.name}: {splits[0].name}, {task.describe(splits[0])}, "
        f"{splits[0].sizes()}{folds} -> {out}"
    )
    plan = steps(recipe)

    def folder(fold: int):
        def path(index, step):
            where = fold_dir(stage_dir(out, index, step.name), fold, len(splits))
            inside(out, where)  # checked before the stage writes anything there
            return where

        return path

    def reuse(index: int):
        return previous[index] if index < len(previous) else None

    for index, step in enumerate(plan):  # a stale or interrupted attempt of a stage to re-run
        if reuse(index) is None:
            _clear_stage(out, stage_dir(out, index, step.name), keep_work=resume)
    tags = [f" (fold {f + 1}/{len(splits)})" if len(splits) > 1 else "" for f in range(len(splits))]
    generators = [
        fold_models(recipe, split, fold, folder(fold), reuse=reuse, tag=tags[fold])
        for fold, split in enumerate(splits)
    ]
    baseline = None  # (record, evals) of the baseline, for every later stage's comparison
    start = time.perf_counter()
    _announce(plan[0], 0, reuse(0))
    for index, built in enumerate(zip(*generators)):
        if reuse(index) is not None:
            record = reuse(index)
            cached = load_predictions(stage_dir(out, index, record["name"])) or []
            evals = [{"y": y, "outputs": o} for y, o in cached]
        else:
            record, evals = _measure(
                recipe, index, list(built), splits, out, baseline, time.perf_counter() - start
            )
        if baseline is None:
            baseline = (record, evals)
        results["stages"].append(record)
        results["provenance"] = clock.provenance()  # seconds so far: the run may stop at any stage
        atomic_write_json(out / RESULTS, results)
        if index + 1 < len(plan):  # the generators build the next stage when the loop asks for it
            _announce(plan[index + 1], index + 1, reuse(index + 1))
        start = time.perf_counter()
    if report:
        write_report(results, out)
    return results


def _clear_stage(out: Path, folder: Path, keep_work: bool) -> None:
    """Remove an unfinished stage's files; with ``keep_work`` (``--resume``) all but its work in
    progress (``StageContext.work_dir``, in the stage's folder or a fold's), which the technique
    checks against its inputs before it continues from it."""
    if not keep_work or not folder.is_dir():
        remove_tree(out, folder)
        return
    for child in folder.iterdir():
        if child.name == WORK:
            continue
        if child.is_dir() and not child.is_symlink() and (child / WORK).is_dir():
            _clear_stage(out, child, keep_work)  # a fold's folder
        else:
            remove_tree(out, child)


def _announce(step, index: int, reused: dict | None) -> None:
    if reused is not None:
        console.print(f"[dim]stage {step.name}: finished earlier, reusing it[/]")
    else:
        console.print(f"[bold cyan]stage {index}: {step.name}[/]")


def _header(recipe: Recipe, splits, task) -> dict:
    first = splits[0]
    return {
        "pare_version": __version__,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "task": {
            "kind": task.kind,
            "dataset": first.name,
            **first.sizes(),
            "classes": first.classes,
            "input_shape": list(first.input_shape),
            "cv_folds": recipe.data.cv_folds,
            "headline": task.headline,
            "summary_metrics": list(task.summary_metrics),
        },
        "machine": machine_info(),
        "stages": [],
    }


def _measure(recipe: Recipe, index: int, built: list[Built], splits, out: Path, baseline, seconds: float):
    """Ship every fold, measure quality per fold and cost on fold 0, judge against the baseline:
    ``(record, evals)``."""
    step, ev, task = built[0].step, recipe.evaluate, get_task(splits[0].kind)
    folder = stage_dir(out, index, step.name)
    start = time.perf_counter()
    artifacts, evals = [], []
    for fold, (b, split) in enumerate(zip(built, splits)):
        tag = f" (fold {fold + 1}/{len(splits)})" if len(splits) > 1 else ""
        with status(f"evaluating {step.name}{tag} on {len(split.test)} test samples"):
            artifacts.append(ship(b, fold_dir(folder, fold, len(splits)), task.inputs(split.test.X[:1])))
            reference = None if baseline is None else baseline[1][fold]["outputs"]
            evals.append(test_quality(b, artifacts[-1], split, ev, recipe.seed, reference))
    save_predictions(folder, [(e["y"], e["outputs"]) for e in evals])
    with status(f"measuring cost of {step.name}: FLOPs, memory, latency in torch and ONNX Runtime"):
        cost = stage_cost(
            built[0].model,
            artifacts[0],
            task,
            splits[0].test,
            evals[0]["torch_outputs"],
            evals[0]["outputs"],
            latency_batch=ev.latency_batch,
            repeats=ev.latency_repeats,
            onnx=ev.onnx,
        )
    with status(f"generating with {step.name}: the prompts, greedy, KV cache"):
        generation = generations(recipe, built[0].model, artifacts[0])
    if generation is not None:  # prefill and decode speed are cost as a user of LLMs reads it
        cost["generation"] = generation
    record = {
        **built[0].step.record(),
        **aggregate(evals),
        "cost": cost,
        "artifact": str(artifacts[0].path.relative_to(out)),
        "seconds": seconds + time.perf_counter() - start,
        "history": built[0].history,
        "info": built[0].info,
        "digests": folder_digests(folder),  # what --resume checks before it reuses the stage
    }
    _validation_drop(record, built[0], baseline, task, ev.warn_drop)
    if baseline is None:
        diagnosis = task.diagnose(built[0].model, splits[0])
        if diagnosis is not None:
            record["diagnosis"] = diagnosis
    else:
        record["comparison"] = compare(record, baseline[0], evals, baseline[1], task, ev, recipe.seed)
    return record, evals


def _validation_drop(record: dict, built: Built, baseline, task, warn_drop: float | None) -> None:
    """The stage's drop of the validation headline from the baseline's (``val_drop``) and, above
    ``evaluate.warn_drop``, a warning (unless its technique already gave one with its remedy)."""
    value = record.get("val_metrics", {}).get(task.headline)
    base = None if baseline is None else baseline[0].get("val_metrics", {}).get(task.headline)
    if value is None or base is None:
        return
    record["val_drop"] = drop = task.drop(base, value)
    if warn_drop is not None and drop > warn_drop and not (built.info or {}).get("warning"):
        record["warning"] = (
            f"lost {drop:.2f} validation {task.drop_unit} of {task.headline} against the baseline "
            f"(evaluate.warn_drop: {warn_drop}); compress it less, fine-tune after it, or raise warn_drop"
        )
        console.print(f"[yellow]  {built.step.name}: {record['warning']}[/]")


def _previous_stages(out: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> list[dict]:
    """Finished stage records that ``--resume`` may reuse (the unchanged prefix)."""
    path = out / RESULTS
    if not path.exists():
        return []
    if not resume:
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run ({path}); pass --resume to continue it, --overwrite to replace it, "
                f"or choose another --out"
            )
        remove_tree(out, out / "stages")
        return []
    old = read_results(path)
    new = recipe.to_dict()
    same_setup = all(
        old["recipe"].get(k) == new.get(k) for k in ("seed", "data", "model", "train", "evaluate")
    )
    if not same_setup:
        console.print(
            "[yellow]recipe's data/model/train/evaluate changed since the last run: running every stage again[/]"
        )
        return []
    kept = []
    old_stages = old["recipe"].get("stages") or []
    names = [s.name for s in steps(recipe)]
    for i, record in enumerate(old["stages"]):
        if i >= len(names) or record["name"] != names[i]:
            break
        if i > 0 and (i > len(old_stages) or new["stages"][i - 1] != old_stages[i - 1]):
            break
        damaged = _damaged(stage_dir(out, i, record["name"]), record)
        if damaged:
            console.print(
                f"[yellow]stage {record['name']}: {damaged}; running it (and what follows) again[/]"
            )
            break
        kept.append(record)
    return kept


def _damaged(folder: Path, record: dict) -> str | None:
    """Why a finished stage's files cannot be reused (missing, or not what was recorded), or None."""
    files = record.get("digests")  # every file the stage wrote, its weights included
    if not isinstance(files, dict):
        return "results.json records no file digests for it (written by an older pare)"
    for name, recorded in files.items():
        path = inside(folder, folder / name)  # a tampered record may name any path
        if not path.is_file():
            return f"{path} is missing"
        if digest(path) != recorded:
            return f"{path} changed since it was recorded (size or SHA-256 differs)"
    return None
