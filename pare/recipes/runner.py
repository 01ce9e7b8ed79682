"""The stage loop behind ``pare run``: baseline, then each technique in order, each evaluated on
the same test data and profiled the same way, with results written after every stage.

Layout of an output folder::

    results.json                  the contract (see README): recipe, task, one record per stage
    report.md, report.html        the report; plots/*.png
    stages/00-baseline/           model.safetensors, model.onnx, predictions.npz
    stages/01-<name>/ ...

Stages are chained: each starts from a copy of the previous stage's model, so the input model
and every earlier artifact stay as they were. ``resume`` reuses finished stages whose recipe and
configuration are unchanged and re-runs from the first one that differs.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pare
from pare.config import to_dict
from pare.cost import profile
from pare.data import Split, make_splits
from pare.errors import ConfigError, PareError
from pare.export import export_onnx, load_weights_file, onnx_latency, onnx_runner, ort_session, save_weights
from pare.io import atomic_write_json, load_predictions, save_predictions
from pare.metrics import majority_accuracy
from pare.models import build_model
from pare.progress import console, status
from pare.provenance import Clock, machine_info
from pare.recipes.context import StageContext
from pare.recipes.schema import Recipe, load_recipe
from pare.registry import techniques
from pare.seeding import seed_everything
from pare.tasks import get_task
from pare.training import fit, loss_and_accuracy
from pare.training.distributed import world

RESULTS = "results.json"


def run(
    recipe: Recipe | str | Path | dict | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
) -> dict:
    """Run a recipe end to end; returns the results (also written to ``out/results.json``)."""
    clock = Clock()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out or Path("runs") / recipe.name)
    if world()[0] > 0:  # under torchrun every process trains; rank 0 alone keeps the results
        out, report = Path(tempfile.mkdtemp(prefix=f"pare-rank{world()[0]}-")), False
    previous = _previous_stages(out, recipe, resume=resume, overwrite=overwrite)
    splits = recipe_splits(recipe)
    first = splits[0]
    task = get_task(first.kind)
    results = {
        "pare_version": pare.__version__,
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
    what = f"{first.num_classes} classes" if task.kind == "classification" else task.kind
    console.print(
        f"[bold]pare run[/] {recipe.name}: {first.name}, {what}, "
        f"{first.sizes()}{f', {len(splits)}-fold CV' if len(splits) > 1 else ''} -> {out}"
    )
    outputs: dict[str, list[torch.nn.Module]] = {}  # stage name -> its model per fold
    baseline_record = None
    stage_list = [None, *recipe.stages]  # None is the baseline
    for index, stage in enumerate(stage_list):
        name = "baseline" if stage is None else stage.name
        stage_dir = out / "stages" / f"{index:02d}-{name}"
        # a stage starts from the previous stage's model, or from the one its `from` names
        source_name = None if stage is None else stage.source or list(outputs)[-1]
        if source_name == "pretrained":  # the recipe's model as built (e.g. LoRA against full fine-tuning)
            source = [_seeded_model(recipe, split, fold) for fold, split in enumerate(splits)]
        else:
            source = None if stage is None else outputs[source_name]
        reused = previous[index] if index < len(previous) else None
        if reused is not None:
            console.print(f"[dim]stage {name}: finished earlier, reusing {stage_dir}[/]")
            models = [_restore(recipe, stage, source, s, stage_dir, reused, f) for f, s in enumerate(splits)]
            record = reused
        else:
            previous = previous[:index]  # everything after a re-run stage is stale
            console.print(f"[bold cyan]stage {index}: {name}[/]")
            record, models = _run_stage(
                recipe,
                stage,
                name,
                stage_dir,
                splits,
                source,
                outputs,
                baseline_record,
                source_name,
            )
        outputs[name] = models
        if stage is None:
            baseline_record = record
        results["stages"].append(record)
        results["provenance"] = clock.provenance()  # seconds so far: the run may stop at any stage
        atomic_write_json(out / RESULTS, results)
    if report:
        from pare.reporting import write_report

        write_report(results, out)
    return results


def _tokenizer(recipe: Recipe):
    if recipe.model.hf is None:
        return None
    from pare.models.hf import load_tokenizer

    return load_tokenizer(recipe.model.hf)


def recipe_splits(recipe: Recipe) -> list[Split]:
    """The recipe's data, split (text tokenized with the model's tokenizer)."""
    return make_splits(recipe.data, recipe.seed, _tokenizer(recipe))


def recipe_model(recipe: Recipe, split: Split) -> torch.nn.Module:
    """The recipe's model, untrained (or pretrained) as the model section describes it."""
    return build_model(recipe.model, split.input_shape, split.num_classes, split.kind, _tokenizer(recipe))


def _seeded_model(recipe: Recipe, split: Split, fold: int) -> torch.nn.Module:
    seed_everything(recipe.seed + fold)  # weight initialisation is part of the seeded run
    return recipe_model(recipe, split)


def train_baseline(recipe: Recipe, split: Split, fold: int = 0, label: str = "train baseline", hooks=()):
    """The recipe's model, seeded and trained as the baseline stage trains it: ``(model, history)``."""
    model = _seeded_model(recipe, split, fold)
    history = None
    if recipe.train.epochs > 0:
        history = fit(
            model,
            split.train,
            split.val,
            recipe.train,
            seed=recipe.seed + fold,
            description=label,
            task=split.kind,
            hooks=hooks,
        )
    return model, history


def apply_stage(
    recipe: Recipe, stage, model, split: Split, earlier: dict, stage_dir: Path, label: str, fold=0
):
    """One technique on a copy of ``model`` (the input stays as it was): ``(model, info, history)``.
    ``earlier`` maps stage names (``baseline`` first) to their models, for teachers."""
    ctx = StageContext(
        split=split,
        baseline=earlier["baseline"],
        train_config=recipe.train,
        seed=recipe.seed + fold,
        out_dir=stage_dir,
        name=label,
        stages=earlier,
    )
    new, info = techniques()[stage.technique].apply(copy.deepcopy(model), stage.config, ctx)
    info = dict(info or {})
    return new, info, info.pop("history", None)


def save_stage_weights(model, path: Path, name: str) -> int:
    """A stage's weights as ``pare run`` writes them (the metadata is part of the file's size)."""
    return save_weights(model, path, metadata={"pare_version": pare.__version__, "stage": name})


def export_stage(stage, model, info: dict, stage_dir: Path, example) -> dict | None:
    """The file the stage's technique ships instead of plain weights (None: it ships none)."""
    technique = None if stage is None else techniques()[stage.technique]
    if technique is None or technique.export is None:
        return None
    return technique.export(model, stage.config, info, stage_dir, example)


def validation_score(model, split: Split):
    """The task's metrics on validation data, without intervals (``val_metrics`` of a stage)."""
    task = get_task(split.kind)
    return task.score(split.val.y.numpy(), task.outputs(model, split.val), classes=split.classes, bootstrap=0)


def _run_stage(recipe, stage, name, stage_dir, splits, models, earlier, baseline_record, source_name=None):
    if stage_dir.exists():  # a stale or interrupted attempt of this stage
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    start = time.perf_counter()
    new_models, evals, histories, infos, extras = [], [], [], [], []
    for fold, split in enumerate(splits):
        tag = f" (fold {fold + 1}/{len(splits)})" if len(splits) > 1 else ""
        if stage is None:
            model, history = train_baseline(recipe, split, fold, label=f"train baseline{tag}")
            info = {}
            extras.append(_diagnose(model, split, recipe) if split.kind == "classification" else None)
        else:
            earlier_fold = {n: ms[fold] for n, ms in earlier.items()}
            model, info, history = apply_stage(
                recipe, stage, models[fold], split, earlier_fold, stage_dir, f"{name}{tag}", fold
            )
        model.eval()
        weights = stage_dir / _weights_name(fold, len(splits))
        save_stage_weights(model, weights, name)
        new_models.append(model)
        histories.append(history.to_dict() if hasattr(history, "to_dict") else history)
        infos.append(info)
        with status(f"evaluating {name}{tag} on {len(split.test)} test samples"):
            evals.append(_evaluate(model, split, recipe, stage_dir, stage, info))
    save_predictions(stage_dir, [(e["y"], e["outputs"]) for e in evals])
    with status(f"measuring cost of {name}: FLOPs, memory, latency in torch and ONNX Runtime"):
        cost = _cost(new_models[0], splits[0], recipe, stage_dir, evals[0])
    record = {
        "name": name,
        "technique": None if stage is None else stage.technique,
        "from": None if stage is None else source_name,
        "config": None if stage is None else to_dict(stage.config),
        **_aggregate(evals),
        "cost": cost,
        "artifact": None,
        "seconds": time.perf_counter() - start,
        "history": histories[0],
        "info": infos[0],
    }
    record["artifact"] = str(Path("stages") / stage_dir.name / record["cost"].pop("artifact"))
    if stage is None:
        if extras[0] is not None:
            record["diagnosis"] = extras[0]
    else:
        record["comparison"] = compare(
            record,
            baseline_record,
            evals,
            load_predictions(stage_dir.parent.parent / Path(baseline_record["artifact"]).parent),
            recipe,
            get_task(splits[0].kind),
        )
    return record, new_models


def _n_folds(recipe: Recipe) -> int:
    return recipe.data.cv_folds or 1


def _weights_name(fold: int, n_folds: int) -> str:
    return "model.safetensors" if n_folds == 1 else f"model-fold{fold}.safetensors"


def _evaluate(model, split: Split, recipe: Recipe, stage_dir: Path, stage, info) -> dict:
    """Test-set quality of what the stage ships: the torch model, or the technique's exported
    artifact when it is meant to run elsewhere (e.g. an int8 ONNX graph in ONNX Runtime)."""
    ev = recipe.evaluate
    task = get_task(split.kind)
    exported = export_stage(stage, model, info, stage_dir, task.inputs(split.test.X[:1]))
    model.eval()
    torch_outputs = task.outputs(model, split.test)  # for a quantized model: pare's simulation
    outputs = torch_outputs
    if exported and exported.get("runtime") == "onnxruntime":
        outputs = task.outputs(onnx_runner(ort_session(exported["artifact"])), split.test)
    y = split.test.y.numpy()
    result = task.score(
        y, outputs, classes=split.classes, bootstrap=ev.bootstrap, confidence=ev.confidence, seed=recipe.seed
    )
    val = validation_score(model, split)
    return {
        "metrics": result.metrics,
        "val_metrics": val.metrics,
        "details": result.details,
        "y": y,
        "outputs": outputs,
        "torch_outputs": torch_outputs,
        "exported": exported,
    }


def _aggregate(evals: list[dict]) -> dict:
    first = evals[0]
    out = {"metrics": first["metrics"], "val_metrics": first["val_metrics"], "details": first["details"]}
    if len(evals) > 1:  # cross-validation: mean and spread of every metric over the folds
        names = [k for k, v in first["metrics"].items() if isinstance(v, float)]
        names = [k for k in names if all(k in e["metrics"] for e in evals)]
        values = {k: np.array([e["metrics"][k] for e in evals]) for k in names}
        out["metrics"] = {k: float(v.mean()) for k, v in values.items()}
        out["metrics_std"] = {k: float(v.std(ddof=1)) for k, v in values.items()}
        out["folds"] = [{k: e["metrics"][k] for k in names} for e in evals]
        out["val_metrics"] = {
            k: float(np.mean([e["val_metrics"][k] for e in evals]))
            for k in first["val_metrics"]
            if all(k in e["val_metrics"] for e in evals)
        }
    return out


def _cost(model, split: Split, recipe: Recipe, stage_dir: Path, evaluation: dict) -> dict:
    """Torch cost, plus the same model in ONNX Runtime side by side (fp32 export), and the
    stage's own artifact when it ships one."""
    ev = recipe.evaluate
    task = get_task(split.kind)
    sample = task.inputs(split.test.X[: ev.latency_batch])  # real inputs, repeated to fill a batch
    example = sample[:1]
    cost = profile(model, sample, batch_size=ev.latency_batch, repeats=ev.latency_repeats)
    weights = stage_dir / _weights_name(0, _n_folds(recipe))
    files = {weights.name: weights.stat().st_size}
    sizes = sorted({1, ev.latency_batch})
    exported = evaluation.get("exported")
    if exported and exported.get("runtime") == "onnxruntime":
        onnx_path = Path(exported["artifact"])
    elif ev.onnx:
        onnx_path = stage_dir / "model.onnx"
        try:
            export_onnx(model, example, onnx_path)
        except PareError as e:
            console.print(f"[yellow]  ONNX Runtime timing skipped: {e}[/]")
            cost["onnx_error"] = str(e)
            onnx_path = None
    else:
        onnx_path = None
    if onnx_path is not None:
        session = ort_session(onnx_path)
        files[onnx_path.name] = onnx_path.stat().st_size
        cost["latency"]["onnxruntime"] = onnx_latency(session, sample, sizes, ev.latency_repeats)
        shipped = exported and exported.get("runtime") == "onnxruntime"  # already run on the test set
        ort = evaluation["outputs"] if shipped else task.outputs(onnx_runner(session), split.test)
        # ONNX Runtime against the torch model (for quantized stages, pare's simulation of it)
        cost.update(task.agreement(ort, evaluation["torch_outputs"], prefix="onnx_"))
    cost["files"] = files
    if exported:
        artifact = Path(exported["artifact"])
        files.setdefault(artifact.name, artifact.stat().st_size)
        cost["runtime"] = exported.get("runtime", "torch")
        if cost["runtime"] == "onnxruntime":
            ort = cost["latency"]["onnxruntime"]
            cost["latency_ms_p50"] = ort["batch_1"]["p50"]
            cost["latency_ms_p95"] = ort["batch_1"]["p95"]
            cost["throughput_per_s"] = ort[f"batch_{sizes[-1]}"]["throughput_per_s"]
    else:
        artifact = weights
    cost["size_bytes"] = files[artifact.name]
    cost["artifact"] = artifact.name
    return cost


def _diagnose(model, split: Split, recipe: Recipe) -> dict:
    """Over- and underfitting flags for the baseline, from eval-mode accuracy on each part.

    Overfitting: training accuracy more than 5 points above validation. Underfitting:
    validation accuracy closes less than half the gap between always predicting the majority
    class and perfect accuracy.
    """
    train_loss, train_acc = loss_and_accuracy(model, split.train)
    val_loss, val_acc = loss_and_accuracy(model, split.val)
    majority = majority_accuracy(split.train.y.numpy(), split.val.y.numpy())
    over = train_acc - val_acc > 0.05
    under = val_acc < majority + 0.5 * (1 - majority)
    notes = []
    if over:
        notes.append(
            f"overfitting: train accuracy {train_acc:.3f} vs validation {val_acc:.3f}; "
            f"try weight decay, dropout, fewer epochs or more data"
        )
    if under:
        notes.append(
            f"underfitting: validation accuracy {val_acc:.3f} is close to always predicting the "
            f"majority class ({majority:.3f}); train longer, raise the learning rate or widen the model"
        )
    return {
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "majority_accuracy": majority,
        "overfitting": over,
        "underfitting": under,
        "notes": notes,
    }


def compare(
    record: dict, baseline: dict, evals: list[dict], baseline_preds: list[tuple], recipe: Recipe, task
) -> dict:
    """A stage against the baseline: metric deltas (paired bootstrap intervals on the same test
    samples), and size, FLOPs and latency ratios (baseline / stage, same runtime and batch)."""
    ev = recipe.evaluate
    out: dict = {}
    for k, v in record["metrics"].items():
        if isinstance(v, float) and isinstance(baseline["metrics"].get(k), float):
            out[f"{k}_delta"] = v - baseline["metrics"][k]
    y = np.concatenate([e["y"] for e in evals])
    outputs = np.concatenate([e["outputs"] for e in evals])
    ref = np.concatenate([p for _, p in baseline_preds])
    paired = task.paired(y, outputs, ref, n_boot=ev.bootstrap, confidence=ev.confidence, seed=recipe.seed)
    out.update({k: v for k, v in paired.items() if v is not None})
    cost, base = record["cost"], baseline["cost"]
    out["size_ratio"] = base["size_bytes"] / cost["size_bytes"] if cost["size_bytes"] else None
    out["params_ratio"] = base["params"] / cost["params"] if cost["params"] else None
    out["flops_ratio"] = base["flops"] / cost["flops"] if cost["flops"] else None
    runtime = cost["runtime"]
    lat, base_lat = cost["latency"].get(runtime), base["latency"].get(runtime)
    if lat and base_lat:
        out["latency_runtime"] = runtime
        for key in lat:
            if key in base_lat:
                out[f"latency_ratio_{key}"] = base_lat[key]["p50"] / lat[key]["p50"]
        out["latency_ratio"] = out.get("latency_ratio_batch_1")
    return out


def _restore(recipe, stage, models, split: Split, stage_dir: Path, record: dict, fold: int):
    """Rebuild a finished stage's model (structure, then saved weights) for ``--resume``."""
    if stage is None:
        model = recipe_model(recipe, split)
    else:
        technique = techniques()[stage.technique]
        model = copy.deepcopy(models[fold])
        if technique.restore is not None:
            model = technique.restore(model, stage.config, record.get("info") or {})
    return load_weights_file(model, stage_dir / _weights_name(fold, _n_folds(recipe))).eval()


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
        shutil.rmtree(out / "stages", ignore_errors=True)
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PareError(f"cannot resume from {path}: {e}; run again with --overwrite") from None
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
    for i, record in enumerate(old.get("stages", [])):
        if i > 0 and (i > len(new["stages"]) or new["stages"][i - 1] != old["recipe"]["stages"][i - 1]):
            break
        stage_dir = out / Path(record["artifact"]).parent
        n_folds = _n_folds(recipe)
        if not all((stage_dir / _weights_name(f, n_folds)).exists() for f in range(n_folds)):
            break
        kept.append(record)
    return kept
