"""One stage, the same way for the baseline and for every technique.

A recipe is a list of ``Step``s; the baseline is the first, a train step. For each fold a step
is *built* (trained, or a technique applied to a copy of its source), *shipped* once into an
``Artifact`` in that fold's own folder, and *evaluated* on the test split, in the artifact's
runtime. ``fold_models`` yields a fold's built steps in order: ``pare run`` zips one generator
per fold, ``pare auto``/``search`` run one on a trial's split. Quality, cost and the comparison
with the baseline are then functions of in-memory results (``runner``, ``cost.artifact``,
``Task.paired``); ``predictions.npz`` is only the cache ``--resume`` reads back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from pare.config import to_dict
from pare.cost.artifact import Artifact
from pare.data import Split, make_splits
from pare.evaluate import validation_metrics
from pare.export import load_weights_file, onnx_runner, ort_session, save_weights
from pare.io import remove_tree
from pare.models import build_model
from pare.recipes.context import StageContext
from pare.recipes.schema import Recipe
from pare.registry import techniques
from pare.seeding import seed_everything
from pare.tasks import get_task
from pare.training import fit
from pare.version import __version__

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Step:
    """A stage of a recipe. ``technique`` None is the baseline: the recipe's model, trained."""

    name: str
    technique: str | None = None
    config: Any = None
    source: str | None = None  # the stage whose model this one starts from, or "pretrained"

    def record(self) -> dict:
        """The step's fields in results.json."""
        config = None if self.config is None else to_dict(self.config)
        return {"name": self.name, "technique": self.technique, "from": self.source, "config": config}


@dataclass
class Built:
    """One step on one fold: the model, what the technique reported, its training history."""

    step: Step
    model: nn.Module
    info: dict
    history: dict | None


def steps(recipe: Recipe) -> list[Step]:
    out = [Step("baseline")]
    for stage in recipe.stages:
        out.append(Step(stage.name, stage.technique, stage.config, stage.source or out[-1].name))
    return out


def stage_dir(out: Path, index: int, name: str) -> Path:
    return out / "stages" / f"{index:02d}-{name}"


def fold_dir(stage: Path, fold: int, n_folds: int) -> Path:
    """Each fold ships into its own folder under cross-validation, so no fold's files replace
    another's; a single split uses the stage folder itself."""
    return stage if n_folds == 1 else stage / f"fold{fold}"


def _tokenizer(recipe: Recipe):
    if not recipe.model.pretrained:
        return None
    from pare.models.hf import load_tokenizer, source  # transformers loads only for pretrained models

    return load_tokenizer(*source(recipe.model))


GENERATION_BATCH = 8  # the throughput row: the first prompt in this many rows at once


def generations(recipe: Recipe, model: nn.Module, artifact: Artifact) -> dict | None:
    """The recipe's prompts continued by a pretrained causal LM stage in the runtime it ships in:
    its ONNX graph with a KV cache where it ships one, else the torch model ({"runtime",
    "prompts", and "batched": the first prompt at ``GENERATION_BATCH`` rows}; None for other
    models)."""
    from pare.export.onnx_lm import STAGE_GRAPH, OrtCausalLM
    from pare.generate import causal_backbone, greedy
    from pare.models.hf import CausalLM

    if causal_backbone(model) is None or not recipe.evaluate.prompts:
        return None
    runtime = "torch"
    if artifact.path.name == STAGE_GRAPH:
        model, runtime = CausalLM(OrtCausalLM(artifact.path)), "onnxruntime"
    tokenizer = _tokenizer(recipe)
    n = recipe.evaluate.max_new_tokens
    prompts = recipe.evaluate.prompts
    return {
        "runtime": runtime,
        "prompts": [greedy(model, tokenizer, p, n) for p in prompts],
        "batched": greedy(model, tokenizer, prompts[0], n, batch=GENERATION_BATCH),
    }


def recipe_splits(recipe: Recipe) -> list[Split]:
    """The recipe's data, split (text tokenized with the model's tokenizer)."""
    return make_splits(recipe.data, recipe.seed, _tokenizer(recipe))


def recipe_model(recipe: Recipe, split: Split) -> nn.Module:
    """The recipe's model, untrained (or pretrained) as the model section describes it."""
    return build_model(recipe.model, split.input_shape, split.num_classes, split.kind, _tokenizer(recipe))


def seeded_model(recipe: Recipe, split: Split, fold: int) -> nn.Module:
    seed_everything(recipe.seed + fold)  # weight initialisation is part of the seeded run
    return recipe_model(recipe, split)


def train_baseline(recipe: Recipe, split: Split, fold: int = 0, label: str = "train baseline", hooks=()):
    """The recipe's model, seeded and trained as the baseline step trains it: ``(model, history)``."""
    model = seeded_model(recipe, split, fold)
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


def _source(recipe: Recipe, step: Step, earlier: dict, split: Split, fold: int) -> nn.Module:
    if step.source == "pretrained":  # the recipe's model as built (e.g. LoRA against full fine-tuning)
        return seeded_model(recipe, split, fold)
    return earlier[step.source]


def build(recipe, step: Step, earlier: dict, split: Split, fold: int, out_dir: Path, label: str, hooks=()):
    """Train the baseline, or apply the step's technique to a copy of its source (which stays as
    it was). ``earlier`` maps earlier steps' names to this fold's models (teachers)."""
    if step.technique is None:
        model, history = train_baseline(recipe, split, fold, label=f"train {label}", hooks=hooks)
        info = {}
    else:
        ctx = StageContext(
            split=split,
            baseline=earlier["baseline"],
            train_config=recipe.train,
            seed=recipe.seed + fold,
            out_dir=out_dir,
            name=label,
            stages=dict(earlier),
        )
        source = _source(recipe, step, earlier, split, fold)
        model, info = techniques()[step.technique].apply(copy.deepcopy(source), step.config, ctx)
        remove_tree(out_dir, ctx.work_dir)  # built: nothing left to resume
        info = dict(info or {})
        history = info.pop("history", None)
    history = history.to_dict() if hasattr(history, "to_dict") else history
    return Built(step, model.eval(), info, history)


def restore(recipe, step: Step, earlier: dict, split: Split, fold: int, out_dir: Path, info: dict) -> Built:
    """A finished step rebuilt for ``--resume``: structure from its ``info``, then saved weights."""
    if step.technique is None:
        model = recipe_model(recipe, split)
    else:
        model = copy.deepcopy(_source(recipe, step, earlier, split, fold))
        technique = techniques()[step.technique]
        if technique.restore is not None:
            model = technique.restore(model, step.config, info)
    return Built(step, load_weights_file(model, out_dir / WEIGHTS).eval(), info, None)


def stage_model(stage_folder: Path) -> tuple[nn.Module, Recipe, str]:
    """A finished stage's model rebuilt from its run folder (``runs/NAME/stages/NN-stage``): the
    recipe from ``results.json``, then every stage it starts from, each restored from its
    record and saved weights. ``(model, recipe, stage name)``."""
    from pare.errors import PareError
    from pare.io import read_results
    from pare.recipes.schema import recipe_from_dict

    stage_folder = Path(stage_folder)
    run_dir = stage_folder.parent.parent
    results = read_results(run_dir / "results.json")
    recipe = recipe_from_dict(results["recipe"], str(run_dir / "results.json"))
    plan, records = steps(recipe), {r["name"]: r for r in results["stages"]}
    folders = {stage_dir(run_dir, i, s.name).name: i for i, s in enumerate(plan)}
    index = folders.get(stage_folder.name)
    if index is None or plan[index].name not in records:
        finished = [stage_dir(run_dir, i, s.name) for i, s in enumerate(plan) if s.name in records]
        raise PareError(
            f"{stage_folder}: not a finished stage of the run in {run_dir}; finished: "
            f"{', '.join(str(f) for f in finished) or 'none'}"
        )
    names = [s.name for s in plan]
    chain = [plan[index]]  # the stage, the stage it starts from, ..., back to the baseline
    while chain[-1].technique is not None and chain[-1].source != "pretrained":
        chain.append(plan[names.index(chain[-1].source)])
    split = recipe_splits(recipe)[0]
    earlier: dict = {}
    for step in reversed(chain):
        i = names.index(step.name)
        info = records[step.name].get("info") or {}
        earlier[step.name] = restore(
            recipe, step, earlier, split, 0, stage_dir(run_dir, i, step.name), info
        ).model
    return earlier[plan[index].name], recipe, plan[index].name


def fold_models(
    recipe: Recipe,
    split: Split,
    fold: int,
    folder: Callable[[int, Step], Path],
    *,
    reuse: Callable[[int], dict | None] = lambda index: None,
    given: dict | None = None,
    hooks=(),
    tag: str = "",
) -> Iterator[Built]:
    """Every step of the recipe on one fold, in order. ``folder(index, step)`` is where the step
    writes; ``reuse(index)`` gives a finished step's record to restore instead of re-running it;
    ``given`` supplies models by step name (a search's baseline, trained once); ``hooks`` go to
    the baseline's training (a search's pruner)."""
    earlier: dict[str, nn.Module] = {}
    for index, step in enumerate(steps(recipe)):
        out_dir = folder(index, step)
        out_dir.mkdir(parents=True, exist_ok=True)
        record = reuse(index)
        if given and step.name in given:
            built = Built(step, given[step.name], {}, None)
        elif record is not None:
            built = restore(recipe, step, earlier, split, fold, out_dir, record.get("info") or {})
        else:
            built = build(recipe, step, earlier, split, fold, out_dir, f"{step.name}{tag}", hooks)
        earlier[step.name] = built.model
        yield built


def ship(built: Built, out_dir: Path, example) -> Artifact:
    """Write the step's weights (always: ``--resume`` loads them) and the file its technique
    ships instead of plain weights, if it has one."""
    weights = out_dir / WEIGHTS
    save_weights(built.model, weights, metadata={"pare_version": __version__, "stage": built.step.name})
    technique = techniques()[built.step.technique] if built.step.technique else None
    if technique is None or technique.export is None:
        return Artifact(weights, "torch", weights)
    exported = technique.export(built.model, built.step.config, built.info, out_dir, example)
    if not exported:
        return Artifact(weights, "torch", weights)
    return Artifact(Path(exported["artifact"]), exported.get("runtime", "torch"), weights)


def test_quality(built: Built, artifact: Artifact, split: Split, evaluate, seed: int, reference=None) -> dict:
    """Test-set quality of what the step ships (in ONNX Runtime when that is its runtime), next
    to the torch model's outputs (for a quantized stage, pare's simulation) and validation metrics.
    ``reference``: the baseline's test outputs on this fold (None for the baseline itself), for
    tasks whose outputs are measured against it (a language model's KL divergence)."""
    task = get_task(split.kind)
    kwargs = {"reference": reference} if task.uses_reference else {}
    torch_outputs = task.outputs(built.model, split.test, **kwargs)
    outputs = torch_outputs
    if artifact.runtime == "onnxruntime":
        outputs = task.outputs(onnx_runner(ort_session(artifact.path)), split.test, **kwargs)
    y = split.test.y.numpy()
    result = task.score(
        y,
        outputs,
        classes=split.classes,
        bootstrap=evaluate.bootstrap,
        confidence=evaluate.confidence,
        seed=seed,
    )
    return {
        "metrics": result.metrics,
        "val_metrics": validation_metrics(built.model, split),
        "details": result.details,
        "y": y,
        "outputs": outputs,
        "torch_outputs": torch_outputs,
    }


def aggregate(evals: list[dict]) -> dict:
    """One fold's metrics as they are; under cross-validation, the mean and spread over folds."""
    first = evals[0]
    out = {"metrics": first["metrics"], "val_metrics": first["val_metrics"], "details": first["details"]}
    if len(evals) > 1:
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


def compare(
    record: dict, baseline: dict, evals: list[dict], baseline_evals: list[dict], task, evaluate, seed
) -> dict:
    """A stage against the baseline: metric deltas (paired bootstrap intervals on the same test
    samples), and size, FLOPs and latency ratios (baseline / stage, same runtime and batch)."""
    out: dict = {}
    for k, v in record["metrics"].items():
        if isinstance(v, float) and isinstance(baseline["metrics"].get(k), float):
            out[f"{k}_delta"] = v - baseline["metrics"][k]
    y = np.concatenate([e["y"] for e in evals])
    outputs = np.concatenate([e["outputs"] for e in evals])
    ref = np.concatenate([e["outputs"] for e in baseline_evals])
    paired = task.paired(
        y, outputs, ref, n_boot=evaluate.bootstrap, confidence=evaluate.confidence, seed=seed
    )
    out.update({k: v for k, v in paired.items() if v is not None})
    if np.shape(outputs) == np.shape(ref):  # a distilled encoder may embed in fewer dimensions
        out.update(task.agreement(outputs, ref))  # fidelity to the baseline's outputs, labels or not
    cost, base = record["cost"], baseline["cost"]
    out["size_ratio"] = base["size_bytes"] / cost["size_bytes"] if cost["size_bytes"] else None
    out["params_ratio"] = base["params"] / cost["params"] if cost["params"] else None
    out["flops_ratio"] = base["flops"] / cost["flops"] if cost["flops"] else None
    for runtime, lat in cost["latency"].items():  # each runtime against itself, at batch 1
        base_lat = base["latency"].get(runtime, {})
        if "batch_1" in lat and "batch_1" in base_lat:
            out[f"latency_ratio_{runtime}"] = base_lat["batch_1"]["p50"] / lat["batch_1"]["p50"]
    runtime = cost["runtime"]  # the runtime that runs what the stage ships, at every batch size
    lat, base_lat = cost["latency"].get(runtime), base["latency"].get(runtime)
    if lat and base_lat:
        out["latency_runtime"] = runtime
        for key in lat:
            if key in base_lat:
                out[f"latency_ratio_{key}"] = base_lat[key]["p50"] / lat[key]["p50"]
        out["latency_ratio"] = out.get("latency_ratio_batch_1")
    return out
