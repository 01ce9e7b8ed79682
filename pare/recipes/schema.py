"""The recipe: what data, which model, how to train, how to measure, and which stages to run.

A recipe is YAML; ``load_recipe`` validates it completely and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pare.config import did_you_mean, from_dict, param, to_dict
from pare.errors import ConfigError
from pare.models import check_model_config
from pare.models.config import ModelConfig
from pare.registry import techniques
from pare.techniques import BUILTIN  # noqa: F401  (importing registers the built-in techniques)

DataSource = Literal[
    "digits",
    "breast_cancer",
    "wine",
    "iris",
    "diabetes",
    "csv",
    "npz",
    "image_folder",
    "pydoc_retrieval",
    "pydoc_lm",
    "pydoc_topics",
]
TEXT_SOURCES = ("pydoc_retrieval", "pydoc_lm", "pydoc_topics")
TOKENIZED = ("pydoc_retrieval", "pydoc_topics")  # by the pretrained model's own tokenizer


@dataclass
class DataConfig:
    source: DataSource = "digits"
    path: str | None = None
    label_column: str | None = None
    image_size: tuple[int, int] | None = None  # image_folder, or a built-in image set (digits): resize
    channels: Literal[1, 3] = 1
    standardize: bool = True
    val_fraction: float = param(0.15, gt=0, lt=0.5)
    test_fraction: float = param(0.2, gt=0, lt=0.5)
    cv_folds: int | None = param(None, ge=2, le=20)
    max_length: int = param(128, ge=8, le=4096)  # text: tokens per text (padded and truncated)
    chunk_sentences: int = param(3, ge=2, le=20)  # pydoc_retrieval/topics: sentences per passage
    vocab_size: int = param(1024, ge=260, le=65536)  # pydoc_lm: byte-level BPE learnt from training topics

    def check(self) -> list[str]:
        problems = []
        if self.source in TEXT_SOURCES and self.cv_folds:
            problems.append(f"data.cv_folds: source {self.source!r} is split once; remove cv_folds")
        files = ("csv", "npz", "image_folder")
        if self.source in files and not self.path:
            problems.append(f"data.path: source {self.source!r} needs a path to the file or folder")
        if self.source not in files and self.path:
            problems.append(
                f"data.path: source {self.source!r} is built in and takes no path; set source: csv/npz/image_folder"
            )
        if self.source == "csv" and not self.label_column:
            problems.append("data.label_column: a CSV source needs the name of its label column")
        if self.image_size is not None and min(self.image_size) < 1:
            problems.append(
                f"data.image_size: {list(self.image_size)!r} must be two positive numbers [height, width]"
            )
        return problems


@dataclass
class TrainConfig:
    epochs: int = param(20, ge=0)
    batch_size: int = param(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = param(3e-3, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = param(10, ge=1)
    gamma: float = param(0.1, gt=0, le=1)
    patience: int | None = param(5, ge=1)  # early stopping on validation loss; null turns it off


@dataclass
class EvalConfig:
    bootstrap: int = param(1000, ge=0)
    confidence: float = param(0.95, gt=0, lt=1)
    latency_batch: int = param(64, ge=1)
    latency_repeats: int = param(50, ge=5)
    onnx: bool = True


@dataclass
class StageConfig:
    technique: str
    name: str
    config: Any  # the technique's own config object
    source: str | None = None  # `from:` the stage whose model this one starts from (default: the previous)


@dataclass
class Recipe:
    name: str = "unnamed"
    description: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="cnn"))
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = to_dict(self)
        out["stages"] = [
            {
                "technique": s.technique,
                "name": s.name,
                **({"from": s.source} if s.source else {}),
                **to_dict(s.config),
            }
            for s in self.stages
        ]
        return out


BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def recipe_from_dict(data: Any, source: str | None = None) -> Recipe:
    """Validate a whole recipe, collecting every problem (sections, stages, model options)."""
    TECHNIQUES = techniques()

    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe is a mapping of sections (data, model, train, ...), got {data!r}", source
        )
    data = dict(data)
    raw_stages = data.pop("stages", None) or []
    problems: list[str] = []
    recipe = None
    try:
        recipe = from_dict(Recipe, data)
    except ConfigError as e:
        problems.extend(e.problems)
    if isinstance(data.get("model"), dict):  # zoo names and options, even when other sections failed
        try:
            problems.extend(check_model_config(from_dict(ModelConfig, data["model"])))
        except ConfigError:
            pass  # already reported above
    stages = []
    if not isinstance(raw_stages, list):
        problems.append(f"stages: expected a list of stages, got {raw_stages!r}")
        raw_stages = []
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or "technique" not in raw:
            problems.append(f"{where}: each stage is a mapping with a 'technique' key, got {raw!r}")
            continue
        raw = dict(raw)
        technique = raw.pop("technique")
        name = raw.pop("name", None) or f"{technique}-{i + 1}"
        start_from = raw.pop("from", None)
        earlier = ["baseline", *(s.name for s in stages)]
        if start_from is not None and start_from not in [*earlier, "pretrained"]:
            problems.append(
                f"{where}.from: {start_from!r} is not an earlier stage{did_you_mean(str(start_from), earlier)}; "
                f"earlier stages: {', '.join(earlier)}, or 'pretrained' (the model as built, before baseline training)"
            )
        if technique not in TECHNIQUES:
            known = ", ".join(TECHNIQUES) or "none registered"
            problems.append(
                f"{where}.technique: unknown technique {technique!r}{did_you_mean(technique, TECHNIQUES)}; known: {known}"
            )
            continue
        try:
            cfg = from_dict(TECHNIQUES[technique].config_cls, raw)
        except ConfigError as e:
            problems.extend(f"{where}.{p}" for p in e.problems)
            continue
        stages.append(StageConfig(technique=technique, name=str(name), config=cfg, source=start_from))
    names = [s.name for s in stages]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"stages: the name {dup!r} is used more than once; stage names must be unique")
    if "baseline" in names or "pretrained" in names:
        problems.append(
            "stages: 'baseline' and 'pretrained' are reserved (the trained model every stage is compared "
            "with, and the model before that training)"
        )
    if recipe is not None and recipe.data.source in TOKENIZED and recipe.model.hf is None:
        problems.append(
            f"model.hf: data source {recipe.data.source!r} is text and is tokenized with the model's tokenizer; "
            f"set model.hf to a Hugging Face model directory"
        )
    if problems:
        raise ConfigError(problems, source)
    recipe.stages = stages
    return recipe


def load_recipe(spec: str | Path | dict | None = None) -> Recipe:
    """A recipe from a YAML file, a built-in name (see ``pare recipes``), a dict, or the default."""
    if isinstance(spec, dict):
        return recipe_from_dict(spec, "the recipe")
    if spec is None:
        spec = "default"
    builtin = builtin_recipes()
    path = Path(spec)
    if not path.exists():
        if str(spec) in builtin:
            path = builtin[str(spec)]
        else:
            raise ConfigError(
                f"no recipe file {str(spec)!r} and no built-in recipe of that name{did_you_mean(str(spec), builtin)}; "
                f"built-in: {', '.join(builtin)}"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", str(path)) from None
    return recipe_from_dict(data, str(path))
