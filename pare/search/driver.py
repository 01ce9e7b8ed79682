"""``pare search`` (architectures) and ``pare auto`` (compression recipes) on Optuna.

Both sample a candidate recipe per trial, measure it on validation data (``candidate.measure``),
and keep its recipe in the trial. At the end: the constraints' feasible trials, their Pareto front
(quality against size or latency), a plot, ``search.json``, the best recipe as YAML, and that
recipe run once by ``pare run`` — the only time test data is used — which also checks that the
run reproduces the validation number and artifact size the search reported.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pare.errors import ConfigError, PareError
from pare.io import atomic_write_json, atomic_write_text
from pare.progress import console
from pare.recipes.pipeline import recipe_splits, train_baseline
from pare.recipes.runner import run
from pare.recipes.schema import Recipe, recipe_from_dict
from pare.registry import techniques
from pare.search import candidate
from pare.search.space import ARCHITECTURES, sample, technique_order, technique_space
from pare.search.study import constraint_values, open_study
from pare.tasks import get_task
from pare.training.hooks import Hook


@dataclass
class Limits:
    max_drop: float | None = None  # points of the headline metric (percent for perplexity)
    max_size: int | None = None  # bytes of the shipped artifact
    max_latency_ms: float | None = None  # batch-1 p50 in the runtime the artifact ships for

    def violations(self, r: dict) -> list[float]:
        """One value per given limit, <= 0 when met (Optuna's constraint convention)."""
        out = []
        if self.max_drop is not None:
            out.append(r["drop"] - self.max_drop)
        if self.max_size is not None:
            out.append(r["size_bytes"] / self.max_size - 1)
        if self.max_latency_ms is not None:
            out.append(r["latency_ms"] / self.max_latency_ms - 1)
        return out


NAS_OBJECTIVES = ("quality", "latency_ms", "size_bytes", "flops")


def auto(
    recipe: Recipe,
    out: Path,
    *,
    limits: Limits,
    trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "auto",
    allowed: list[str] | None = None,
    final: bool = True,
) -> dict:
    """Search compression recipes over the registered techniques for ``recipe``'s model."""
    space = _technique_spaces(allowed)
    objectives = _objectives(limits)
    study = _open("auto", recipe, out, objectives, limits, storage, study_name, sampler)
    split = recipe_splits(recipe)[0]
    baseline, base = _baseline(recipe, split, out)

    def objective(trial):
        raw = recipe.to_dict()
        stages = []
        for name, tspace in space:
            if trial.suggest_categorical(f"{name}.use", [True, False]):
                stages.append({"technique": name, "name": name, **sample(trial, name, tspace)})
        raw["stages"] = stages
        raw["name"] = f"{recipe.name}-auto-{trial.number}"
        return _evaluate(trial, raw, split, out, base, limits, objectives, baseline=baseline)

    return _search("auto", study, out, objective, objectives, limits, trials, base, final)


def nas(
    recipe: Recipe,
    out: Path,
    *,
    limits: Limits,
    trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "auto",
    objectives: tuple[str, ...] = ("quality", "latency_ms"),
    final: bool = True,
) -> dict:
    """Search the zoo model's width/depth/kernel/heads for ``recipe``'s data."""
    name = recipe.model.name
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"model: pare search explores zoo architectures ({', '.join(ARCHITECTURES)}); "
            f"the recipe's model is {recipe.model.factory or recipe.model.hf!r}. For your own model use pare auto"
        )
    objs = list(objectives)
    wrong = [o for o in objs if o not in NAS_OBJECTIVES]
    if wrong or objs[:1] != ["quality"] or len(set(objs)) != len(objs):
        raise ConfigError(
            f"objectives: {','.join(map(str, objs))!r} must be 'quality' followed by any of "
            f"{', '.join(NAS_OBJECTIVES[1:])}, each once"
            + (f"; unknown: {', '.join(map(repr, wrong))}" if wrong else "")
        )
    study = _open("search", recipe, out, objs, limits, storage, study_name, sampler)
    split = recipe_splits(recipe)[0]
    _, base = _baseline(recipe, split, out)  # the recipe's own architecture: the point trials beat

    def objective(trial):
        raw = recipe.to_dict()
        raw["model"]["args"] = {**raw["model"]["args"], **sample(trial, "model", ARCHITECTURES[name])}
        raw["stages"] = []
        raw["name"] = f"{recipe.name}-nas-{trial.number}"
        hooks = [_PruningHook(trial)] if len(objs) == 1 else []  # Optuna prunes single-objective studies only
        return _evaluate(trial, raw, split, out, base, limits, objs, hooks=hooks)

    return _search("search", study, out, objective, objs, limits, trials, base, final)


def _baseline(recipe: Recipe, split, out: Path):
    """The recipe's trained model without stages, and its measurement (once per worker: every
    worker trains the same seeded baseline)."""
    plain = copy.deepcopy(recipe)
    plain.stages = []
    model, _ = train_baseline(plain, split, label="baseline (once per worker)")
    base = candidate.measure(plain, split, out / "work" / f"baseline-{os.getpid()}", baseline=model)
    console.print(
        f"baseline: val {base['metric']} {base['quality']:.4f}, {base['size_bytes']:,} bytes, "
        f"{base['latency_ms']:.3f} ms"
    )
    return model, base


def _feasible(attrs: dict) -> bool:
    return all(c <= 0 for c in attrs.get("constraints", []))


def _signed(t) -> float:
    """A trial's validation quality, higher is better (minus perplexity)."""
    q = t.user_attrs["quality"]
    return q if t.user_attrs["higher_is_better"] else -q


def _technique_spaces(allowed):
    found = techniques()
    if allowed:
        unknown = [a for a in allowed if a not in found]
        if unknown:
            raise ConfigError(
                f"--techniques: {', '.join(unknown)} not registered; registered: {', '.join(found)}"
            )
    chosen = [t for n, t in found.items() if (not allowed or n in allowed) and technique_space(t) is not None]
    if not chosen:
        raise ConfigError("--techniques: none of them is searchable (each opted out of auto-compression)")
    return [(t.name, technique_space(t)) for t in sorted(chosen, key=technique_order)]


def _objectives(limits: Limits) -> list[str]:
    objs = ["quality", "size_bytes"]
    if limits.max_latency_ms is not None:
        objs.append("latency_ms")
    return objs


class _PruningHook(Hook):
    """Reports each epoch's validation accuracy to Optuna and stops a trial its pruner rejects."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, state, record):
        import optuna

        self.trial.report(record["val_accuracy"], state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch + 1}")


def _evaluate(trial, raw, split, out, base, limits, objectives, baseline=None, hooks=()):
    import optuna

    try:
        cand = recipe_from_dict(raw, f"trial {trial.number}")
    except ConfigError as e:  # a sampled combination the technique's own checks reject
        trial.set_user_attr("invalid", str(e))
        raise optuna.TrialPruned(str(e)) from None
    console.print(
        f"[bold]trial {trial.number}[/]: "
        + (", ".join(f"{s.technique}" for s in cand.stages) or f"model {raw['model']['args']}")
    )
    work = out / "work" / f"trial-{trial.number}-{os.getpid()}"
    try:
        r = candidate.measure(cand, split, work, baseline=baseline, hooks=hooks)
    except PareError as e:
        trial.set_user_attr("error", str(e))
        raise
    r["drop"] = get_task(split.kind).drop(base["quality"], r["quality"])
    r["constraints"] = limits.violations(r)
    for k, v in r.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("recipe", raw)
    console.print(
        f"  val {r['metric']} {r['quality']:.4f}, {r['size_bytes']:,} bytes, {r['latency_ms']:.3f} ms"
        + (" [green]feasible[/]" if _feasible(r) else " [yellow]outside the limits[/]")
    )
    return tuple(r[o] for o in objectives)


def _open(kind, recipe, out, objectives, limits, storage, study_name, sampler):
    import optuna

    limited = (limits.max_drop, limits.max_size, limits.max_latency_ms) != (None, None, None)
    return open_study(
        study_name or f"{recipe.name}-{kind}",
        storage,
        out,
        ["maximize" if o == "quality" else "minimize" for o in objectives],
        sampler,
        recipe.seed,
        constraints=constraint_values if limited else None,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
        if len(objectives) == 1
        else None,
    )


def _search(kind, study, out, objective, objectives, limits, trials, base, final):
    import optuna

    study.optimize(objective, n_trials=trials, catch=(PareError, RuntimeError, ValueError))
    with contextlib.suppress(OSError):  # each trial removed its own folder; other workers may still
        (out / "work").rmdir()  # be writing theirs under a shared --out, so never remove those
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
        raise PareError(
            f"no trial of study {study.study_name!r} finished ({len(study.trials)} ran, {len(failed)} failed; "
            f"Optuna logged each failure's error above)"
        )
    feasible = [t for t in done if _feasible(t.user_attrs)]
    front = pareto_front(feasible or done, objectives)
    summary = {
        "study": study.study_name,
        "kind": kind,
        "objectives": objectives,
        "limits": limits.__dict__,
        "baseline": base,
        "trials": [_trial_record(t) for t in study.trials],
        "front": [t.number for t in front],
    }
    _plot(done, feasible, objectives, kind, out / "pareto.png")
    if not feasible:
        closest = min(done, key=lambda t: sum(max(0.0, c) for c in t.user_attrs["constraints"]))
        atomic_write_text(out / "closest.yaml", yaml.safe_dump(closest.user_attrs["recipe"], sort_keys=False))
        summary["closest"] = closest.number
        atomic_write_json(out / "search.json", summary)
        raise PareError(
            f"no candidate met the limits {_limits_text(limits)} in {len(done)} finished trials; the closest, trial "
            f"{closest.number}: {_result_text(closest.user_attrs)} (recipe in {out / 'closest.yaml'}). "
            f"Relax a limit or run more --trials"
        )
    # auto: the smallest artifact that keeps to the limits; search: the best quality
    if kind == "auto":
        best = min(feasible, key=lambda t: (t.user_attrs["size_bytes"], -_signed(t)))
    else:
        best = max(feasible, key=_signed)
    summary["best"] = best.number
    atomic_write_text(out / "best.yaml", yaml.safe_dump(best.user_attrs["recipe"], sort_keys=False))
    console.print(
        f"[bold green]best: trial {best.number}[/] {_result_text(best.user_attrs)} -> {out / 'best.yaml'}"
    )
    if final:
        summary["final"] = _final_run(best, out)
    atomic_write_json(out / "search.json", summary)
    return summary


def _plot(done, feasible, objectives, kind, path: Path) -> None:
    from pare.reporting.plots import pareto_plot

    x = "latency_ms" if kind == "search" and "latency_ms" in objectives else "size_bytes"
    label = "batch-1 latency (ms, log)" if x == "latency_ms" else "artifact size (bytes, log)"
    ok = {t.number for t in feasible}
    points = [(f"t{t.number}", t.user_attrs[x], t.user_attrs["quality"]) for t in done if t.number in ok]
    others = [(t.user_attrs[x], t.user_attrs["quality"]) for t in done if t.number not in ok]
    pareto_plot(points, f"validation {done[0].user_attrs['metric']}", path, xlabel=label, excluded=others)


def _final_run(best, out: Path) -> dict:
    """The best recipe run once by ``pare run``: test metrics, and the search's numbers checked."""
    results = run(best.user_attrs["recipe"], out / "final", overwrite=True)
    last = results["stages"][-1]
    metric = best.user_attrs["metric"]
    reproduced = {
        "val_search": best.user_attrs["quality"],
        "val_run": last["val_metrics"][metric],
        "size_search": best.user_attrs["size_bytes"],
        "size_run": last["cost"]["size_bytes"],
    }
    same = (
        abs(reproduced["val_search"] - reproduced["val_run"]) < 1e-6
        and reproduced["size_search"] == reproduced["size_run"]
    )
    reproduced["reproduced"] = same
    console.print(
        f"final run (test data, once): test {metric} {last['metrics'][metric]:.4f}; "
        + (
            "search's validation number and size reproduced"
            if same
            else f"[yellow]differs from the search: {reproduced}[/]"
        )
    )
    return {"test_metrics": last["metrics"], "comparison": last.get("comparison"), **reproduced}


def pareto_front(trials, objectives: list[str]):
    """Trials no other trial beats on every objective (quality up, the rest down)."""

    def key(t):
        return [-_signed(t) if o == "quality" else t.user_attrs[o] for o in objectives]

    points = [(t, key(t)) for t in trials]
    front = []
    for t, p in points:
        dominated = any(all(a <= b for a, b in zip(q, p)) and q != p for _, q in points)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.user_attrs["size_bytes"])


def _trial_record(t) -> dict:
    keep = (
        "quality",
        "metric",
        "size_bytes",
        "latency_ms",
        "flops",
        "params",
        "drop",
        "constraints",
        "runtime",
    )
    return {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        **{k: t.user_attrs[k] for k in keep if k in t.user_attrs},
        **{k: t.user_attrs[k] for k in ("error", "invalid") if k in t.user_attrs},
        "feasible": t.state.name == "COMPLETE" and _feasible(t.user_attrs),
        "stages": [s["technique"] for s in t.user_attrs.get("recipe", {}).get("stages", [])],
    }


def _limits_text(limits: Limits) -> str:
    parts = []
    if limits.max_drop is not None:
        parts.append(f"drop <= {limits.max_drop} points")
    if limits.max_size is not None:
        parts.append(f"size <= {limits.max_size:,} bytes")
    if limits.max_latency_ms is not None:
        parts.append(f"latency <= {limits.max_latency_ms} ms")
    return ", ".join(parts)


def _result_text(a: dict) -> str:
    return (
        f"val {a['metric']} {a['quality']:.4f} (drop {a['drop']:.2f}), {a['size_bytes']:,} bytes, "
        f"{a['latency_ms']:.3f} ms"
    )
