"""The ``distill`` technique: build the student and the teachers, train with the distillation
hook (for several born-again generations if asked), keep the best generation by validation."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from pare.config import did_you_mean
from pare.cost import count_params
from pare.errors import ConfigError, UnsupportedModelError
from pare.graph.surgery import reshape
from pare.models import build_model
from pare.models.config import ModelConfig
from pare.progress import console
from pare.registry import register, techniques
from pare.selection import listing
from pare.tasks import get_task
from pare.techniques.distill.config import DistillConfig, FeatureConfig, StudentConfig
from pare.techniques.distill.hook import Adapter, Captures, DistillHook, TeacherBank, last_linear

CACHE_LIMIT = 2 * 2**30  # bytes of full next-token distributions a teacher cache may hold


def distill(model: nn.Module, config: DistillConfig, ctx):
    """Train a smaller student on the soft targets, features or embeddings of teachers."""
    split = ctx.split
    if split.kind not in ("classification", "retrieval", "language_model"):
        raise UnsupportedModelError(
            f"distill: {split.kind} tasks are not supported; classification, retrieval and language models are"
        )
    _check_task(config, split.kind)
    teachers, untrained = _teachers(model, config, ctx)
    student, student_info = _student(model, config.student, ctx)
    example = get_task(split.kind).inputs(split.train.X[:2])
    _check_outputs(teachers, student, example)
    _check_layers(teachers[0], student, config)  # before any training: a typo costs nothing
    teacher_info = _train_teachers(teachers, untrained, config, ctx)
    init_state = copy.deepcopy(student.state_dict())
    info = {
        **student_info,
        "input_shape": list(split.input_shape),
        "num_classes": split.num_classes,
        "teachers": teacher_info,
        "student_params": count_params(student)["params"],
        "params_ratio": teacher_info[0]["params"] / count_params(student)["params"],
        "generations": [],
    }
    best = None
    gen_config = config
    for generation in range(config.generations):
        if generation:  # born-again: a fresh student learns from the previous generation alone
            teachers = [copy.deepcopy(student)]
            student.load_state_dict(init_state)
            gen_config = _born_again(config)
        tag = f" generation {generation + 1}/{config.generations}" if config.generations > 1 else ""
        history, extra = _train(student, teachers, gen_config, ctx, example, tag)
        score = ctx.score(student)
        record = {"generation": generation + 1, "val_score": score, **extra}
        info["generations"].append(record)
        if best is None or score > best[0]:
            best = (score, generation + 1, copy.deepcopy(student.state_dict()), history)
    score, kept, state, history = best
    student.load_state_dict(state)
    info.update({"kept_generation": kept, "val_score": score, "history": history})
    info.update(info["generations"][kept - 1])
    if config.generations > 1:
        console.print(f"  {ctx.name}: kept generation {kept} (validation score {score:.4f})")
    return student.eval(), info


def _check_task(config: DistillConfig, kind: str) -> None:
    problems = config.task_problems(kind)
    if problems:
        raise ConfigError(problems)


def _born_again(config: DistillConfig) -> DistillConfig:
    """The settings for a later generation: its teacher has the student's architecture, so the
    student's layer names serve on both sides."""
    return dataclasses.replace(
        config,
        teachers=[],
        weighting="average",
        features=[FeatureConfig(f.student, f.student, f.loss, f.weight) for f in config.features],
        crd=None
        if config.crd is None
        else dataclasses.replace(config.crd, teacher_layer=config.crd.student_layer),
    )


def _train(student, teachers, config, ctx, example, tag):
    first, crd, features = teachers[0], config.crd, config.features
    embedding_t = embedding_s = None
    if crd is not None:
        # layer names were checked before training (later generations reuse the student's)
        embedding_t = (crd.teacher_layer, False) if crd.teacher_layer else (last_linear(first), True)
        embedding_s = (crd.student_layer, False) if crd.student_layer else (last_linear(student), True)
    task = get_task(ctx.split.kind)
    bank = TeacherBank(
        teachers, [f.teacher for f in features], embedding_t, task, config.top_k, config.temperature
    )
    # shapes of every matched output, from one probe batch, to size adapters and CRD heads
    probe_t = bank.compute(example)
    capture = Captures(student, [f.student for f in features], embedding_s)
    with torch.no_grad():
        student.eval()(example)
    capture.remove()
    adapters = nn.ModuleDict(
        {
            str(i): Adapter(
                capture.values[f.student].shape, probe_t[f"feature:{f.teacher}"].shape, f"features[{i}]"
            )
            for i, f in enumerate(features)
        }
    )
    heads = None
    if crd is not None:
        d_s = capture.values["embedding"].shape[1]
        heads = nn.ModuleDict(
            {"student": nn.Linear(d_s, crd.dim), "teacher": nn.Linear(probe_t["embedding"].shape[1], crd.dim)}
        )
    extra = {}
    if config.cache_teacher:
        X = task.inputs(ctx.split.train.X)
        if probe_t["logits0"].dim() == 3 and config.top_k is None:  # a language model's full vocabulary
            size = probe_t["logits0"][:1].numel() * len(X) * 4
            if size > CACHE_LIMIT:
                raise ConfigError(
                    f"top_k: caching the teacher's whole next-token distributions would take {size / 2**30:.1f} GiB "
                    f"({len(X)} windows x {probe_t['logits0'].shape[1]} positions x {probe_t['logits0'].shape[2]:,} "
                    f"tokens); set top_k (e.g. 64) or cache_teacher: false"
                )
        extra["teacher_cache_bytes"] = bank.build_cache(X)
    hook = DistillHook(
        bank, config, student, features, adapters, heads, embedding_s, embeddings=task.kind == "retrieval"
    )
    params = [*student.parameters(), *adapters.parameters(), *(heads.parameters() if heads else [])]
    overrides = {k: v for k, v in (("epochs", config.epochs), ("lr", config.lr)) if v is not None}
    history = ctx.fit(student, hooks=[hook], params=params, label=tag, **overrides)
    extra["adapter_params"] = sum(p.numel() for p in adapters.parameters())
    if heads is not None:
        extra["crd_layers"] = {
            "teacher": embedding_t[0] + (" (input)" if embedding_t[1] else ""),
            "student": embedding_s[0] + (" (input)" if embedding_s[1] else ""),
        }
    return history, extra


def _check_layers(teacher: nn.Module, student: nn.Module, config: DistillConfig) -> None:
    for i, f in enumerate(config.features):
        _module(teacher, f.teacher, f"features[{i}].teacher")
        _module(student, f.student, f"features[{i}].student")
    if config.crd is not None:
        for model, name, key in (
            (teacher, config.crd.teacher_layer, "crd.teacher_layer"),
            (student, config.crd.student_layer, "crd.student_layer"),
        ):
            if name is not None:
                _module(model, name, key)


def _module(model: nn.Module, name: str, key: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        raise ConfigError(f"{key}: no layer {name!r}{did_you_mean(name, names)}; layers: {listing(names)}")
    return name


def _teachers(model, config: DistillConfig, ctx) -> tuple[list[nn.Module], list[int]]:
    """The teacher models, and which of them still need training (a model without weights)."""
    if not config.teachers:
        return [model], []
    models, untrained = [], []
    for i, t in enumerate(config.teachers):
        if t.stage is not None:
            if t.stage not in ctx.stages:
                raise ConfigError(
                    f"teachers[{i}].stage: {t.stage!r} is not an earlier stage{did_you_mean(t.stage, ctx.stages)}; "
                    f"earlier stages: {', '.join(ctx.stages)}"
                )
            models.append(ctx.stages[t.stage])
            continue
        torch.manual_seed(ctx.seed + 1000 + i)
        spec = ModelConfig(name=t.name, factory=t.factory, args=t.args, weights=t.weights)
        models.append(build_model(spec, ctx.split.input_shape, ctx.split.num_classes))
        if t.weights is None:
            untrained.append(i)
    return models, untrained


def _train_teachers(teachers, untrained, config: DistillConfig, ctx) -> list[dict]:
    info = []
    for i, teacher in enumerate(teachers):
        if not config.teachers:
            source = "the stage's input model"
        else:
            t = config.teachers[i]
            source = f"stage {t.stage}" if t.stage else t.name or t.factory
        if i in untrained:
            ctx.fit(teacher, label=f" teacher {i + 1}")
            source += " (trained here)"
        params = count_params(teacher)["params"]
        info.append({"source": source, "params": params, "val_score": ctx.score(teacher)})
    return info


def _student(teacher: nn.Module, spec: StudentConfig | None, ctx) -> tuple[nn.Module, dict]:
    if spec is None:  # the stage's input model (e.g. layers dropped by an earlier prune stage)
        return teacher, {"student": "the stage's input model"}
    if spec.shrink is None:
        torch.manual_seed(ctx.seed)
        cfg = ModelConfig(name=spec.name, factory=spec.factory, args=spec.args, weights=spec.weights)
        return build_model(cfg, ctx.split.input_shape, ctx.split.num_classes), {
            "student": spec.name or spec.factory
        }
    # a thinner copy of the teacher: its weakest channels removed by structured pruning
    # (asked of the registry by name: a technique never imports another)
    prune = techniques()["prune"]
    shrink = prune.config_cls(method="structured", target="params", amount=1 - spec.shrink, criterion="l1")
    student, pruned = prune.apply(copy.deepcopy(teacher), shrink, ctx)
    return student, {
        "student": f"teacher shrunk to {spec.shrink:.0%} of its parameters",
        "student_shapes": pruned["shapes"],
    }


def _check_outputs(teachers, student, example) -> None:
    with torch.no_grad():
        s = tuple(student.eval()(example).shape)
        for i, t in enumerate(teachers):
            shape = tuple(t.eval()(example).shape)
            if shape != s and len(s) == 3:
                raise UnsupportedModelError(
                    f"teacher {i + 1} predicts over {shape[-1]:,} tokens but the student over {s[-1]:,}; a "
                    f"language model student must share the teacher's tokenizer and vocabulary"
                )
            if shape != s:
                raise UnsupportedModelError(
                    f"teacher {i + 1} returns outputs of shape {shape} but the student {s}; both must give "
                    f"logits over the same classes"
                )


def restore(model: nn.Module, config: DistillConfig, info: dict) -> nn.Module:
    """The student's structure, for ``--resume`` (the weights are loaded afterwards)."""
    if "student_shapes" in info:
        return reshape(copy.deepcopy(model), info["student_shapes"])
    spec = config.student
    if spec is None:
        return model
    cfg = ModelConfig(name=spec.name, factory=spec.factory, args=spec.args)
    return build_model(cfg, tuple(info["input_shape"]), info["num_classes"])


register("distill", DistillConfig, restore=restore, search={"student.shrink": (0.25, 0.75), "order": 0})(
    distill
)
