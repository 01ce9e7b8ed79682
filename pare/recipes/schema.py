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
from pare.generate import DEFAULT_PROMPTS
from pare.io import name_problem
from pare.models import check_model_config
from pare.models.config import ModelConfig
from pare.registry import techniques
from pare.selection import pattern_problems
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
    "fashion_mnist",
    "idx",
    "pydoc_retrieval",
    "pydoc_lm",
    "pydoc_topics",
    "pydoc_text",
    "text",
]
TEXT_SOURCES = ("pydoc_retrieval", "pydoc_lm", "pydoc_topics", "pydoc_text", "text")
# tokenized by the pretrained model's own tokenizer
TOKENIZED = ("pydoc_retrieval", "pydoc_topics", "pydoc_text", "text")
NEXT_TOKEN = ("pydoc_text", "text")  # next-token windows for a pretrained causal LM
FILE_SOURCES = ("csv", "npz", "image_folder", "idx", "text")
IDX_SOURCES = ("fashion_mnist", "idx")  # with the official test set, subsampled by max_samples


@dataclass
class DataConfig:
    source: DataSource = "digits"
    path: str | None = None
    label_column: str | None = None
    image_size: tuple[int, int] | None = None  # image_folder, idx, or a built-in image set (digits): resize
    channels: Literal[1, 3] = 1  # image_folder, idx: 3 repeats grey images for colour networks
    max_samples: int | None = param(None, ge=100)  # idx sources: a seeded, stratified subset in all
    standardize: bool = True
    val_fraction: float = param(0.15, gt=0, lt=0.5)
    test_fraction: float = param(0.2, gt=0, lt=0.5)
    cv_folds: int | None = param(None, ge=2, le=20)
    max_length: int = param(128, ge=8, le=131_072)  # text: tokens per text or window (padded, truncated)
    stride: int | None = param(
        None, ge=1, le=131_072
    )  # pydoc_text/text test and val windows: tokens between starts (default max_length)
    chunk_sentences: int = param(3, ge=2, le=20)  # pydoc_retrieval/topics: sentences per passage
    vocab_size: int = param(1024, ge=260, le=65536)  # pydoc_lm: byte-level BPE learnt from training topics

    def check(self) -> list[str]:
        problems = []
        if self.source in TEXT_SOURCES and self.cv_folds:
            problems.append(f"data.cv_folds: source {self.source!r} is split once; remove cv_folds")
        files = FILE_SOURCES
        if self.stride is not None and self.source not in NEXT_TOKEN:
            problems.append("data.stride: only next-token text (pydoc_text, text) has windows; remove stride")
        if self.stride is not None and self.stride > self.max_length:
            problems.append(
                f"data.stride: {self.stride} is longer than max_length {self.max_length}: tokens between the "
                f"windows would never be scored; use at most {self.max_length}"
            )
        if self.source in files and not self.path:
            problems.append(f"data.path: source {self.source!r} needs a path to the file or folder")
        if self.source not in files and self.path:
            problems.append(
                f"data.path: source {self.source!r} is built in and takes no path; set source: csv/npz/image_folder/text"
            )
        if self.max_samples is not None and self.source not in IDX_SOURCES:
            problems.append(
                f"data.max_samples: only the IDX sources ({', '.join(IDX_SOURCES)}) are subsampled; remove it"
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
    epochs: int = param(20, ge=0, le=100_000)
    batch_size: int = param(64, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = param(3e-3, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = param(10, ge=1, le=100_000)
    gamma: float = param(0.1, gt=0, le=1)
    patience: int | None = param(5, ge=1, le=100_000)  # early stopping on validation loss; null turns it off


@dataclass
class EvalConfig:
    # upper bounds keep a typo (bootstrap: 1e30) from filling memory or running for days
    bootstrap: int = param(1000, ge=0, le=100_000)
    confidence: float = param(0.95, gt=0, lt=1)
    latency_batch: int = param(64, ge=1, le=4096)
    latency_repeats: int = param(50, ge=5, le=10_000)
    onnx: bool = True
    # warn when a stage's validation headline is this much worse than the baseline's (the task's
    # unit: accuracy points, or percent of perplexity); null: no warning
    warn_drop: float | None = param(1.0, ge=0)
    # a pretrained causal LM: every stage continues these prompts (greedy, KV cache), timed
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = param(32, ge=1, le=4096)


@dataclass
class StageConfig:
    technique: str
    name: str
    config: Any  # the technique's own config object
    source: str | None = None  # `from:` the stage whose model this one starts from (default: the previous)


@dataclass
class Recipe:
    name: str = "unnamed"  # names the default output folder runs/<name>: a plain name
    description: str = ""
    seed: int = param(0, ge=0, lt=2**32)  # numpy's seeds are 32-bit
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

    def check(self) -> list[str]:
        problem = name_problem(self.name, "name")
        return [problem] if problem else []


BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def recipe_from_dict(data: Any, source: str | None = None) -> Recipe:
    """Validate a whole recipe, collecting every problem (sections, stages, model options)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe is a mapping of sections (data, model, train, ...), got {data!r}", source
        )
    data = dict(data)
    train = data.get("train")
    epochs_given = isinstance(train, dict) and "epochs" in train
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
        stage = _stage(i, raw, stages, problems)
        if stage is not None:
            stages.append(stage)
    names = [s.name for s in stages]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"stages: the name {dup!r} is used more than once; stage names must be unique")
    if "baseline" in names or "pretrained" in names:
        problems.append(
            "stages: 'baseline' and 'pretrained' are reserved (the trained model every stage is compared "
            "with, and the model before that training)"
        )
    if recipe is not None and recipe.data.source in TOKENIZED and not recipe.model.pretrained:
        problems.append(
            f"model.hf: data source {recipe.data.source!r} is text and is tokenized with the model's tokenizer; "
            f"set model.hf to a Hugging Face model directory (or model.gguf to a GGUF file)"
        )
    causal = None
    if recipe is not None and recipe.model.pretrained and not check_model_config(recipe.model):
        causal = _pretrained_problems(recipe, problems)
    if problems:
        raise ConfigError(problems, source)
    if causal and not epochs_given:  # a pretrained LM's baseline is the model as loaded
        recipe.train.epochs = 0
    recipe.stages = stages
    return recipe


def _pretrained_problems(recipe: Recipe, problems: list[str]) -> bool:
    """Add what does not fit between a pretrained model and the data; whether it is a causal LM."""
    from pare.errors import UnsupportedModelError
    from pare.models.hf import context_length, is_causal, load_config, model_label, source

    try:
        folder, gguf = source(recipe.model)
        config = load_config(folder, gguf)
    except UnsupportedModelError as e:
        problems.append(str(e))
        return False
    causal = is_causal(config, gguf)
    label, data = model_label(recipe.model), recipe.data.source
    arch = ", ".join(config.architectures or []) or config.model_type
    if data == "pydoc_lm":
        problems.append(
            f"data.source: 'pydoc_lm' learns its own tokenizer for a model trained from scratch; {label} has "
            f"its own: use source: pydoc_text (or text with a path)"
        )
    elif causal and data not in NEXT_TOKEN:
        problems.append(
            f"data.source: {label} is a causal language model ({arch}); it is measured on next-token text: "
            f"use source: pydoc_text (or text with a path), not {data!r}"
        )
    elif not causal and data in NEXT_TOKEN:
        problems.append(
            f"data.source: {data!r} is next-token text, but {label} is not a causal language model ({arch}); "
            f"give a ...ForCausalLM model, or a source for encoders (pydoc_retrieval, pydoc_topics)"
        )
    context = context_length(config)
    if context is not None and recipe.data.max_length > context:
        problems.append(
            f"data.max_length: {recipe.data.max_length} tokens is beyond {label}'s context of {context}; "
            f"use at most {context}"
        )
    return causal


def _stage(i: int, raw: Any, earlier_stages: list[StageConfig], problems: list[str]) -> StageConfig | None:
    """One entry of ``stages``, or None after adding its problems to ``problems``."""
    known = techniques()
    where = f"stages[{i}]"
    if not isinstance(raw, dict) or "technique" not in raw:
        problems.append(f"{where}: each stage is a mapping with a 'technique' key, got {raw!r}")
        return None
    raw = dict(raw)
    technique, name, start_from = raw.pop("technique"), raw.pop("name", None), raw.pop("from", None)
    if not isinstance(technique, str) or technique not in known:
        problems.append(
            f"{where}.technique: unknown technique {technique!r}{did_you_mean(str(technique), known)}; "
            f"known: {', '.join(known) or 'none registered'}"
        )
        return None
    name = f"{technique}-{i + 1}" if name is None else name
    bad_name = name_problem(name, f"{where}.name")
    if bad_name:
        problems.append(bad_name + " (it names the stage's folder)")
        return None
    earlier = ["baseline", *(s.name for s in earlier_stages)]
    if start_from is not None and start_from not in [*earlier, "pretrained"]:
        problems.append(
            f"{where}.from: {start_from!r} is not an earlier stage{did_you_mean(str(start_from), earlier)}; "
            f"earlier stages: {', '.join(earlier)}, or 'pretrained' (the model as built, before baseline training)"
        )
    try:
        cfg = from_dict(known[technique].config_cls, raw)
    except ConfigError as e:
        problems.extend(f"{where}.{p}" for p in e.problems)
        return None
    later = pattern_problems(cfg) + _reference_problems(cfg, earlier)
    problems.extend(f"{where}.{p}" for p in later)
    return None if later else StageConfig(technique=technique, name=name, config=cfg, source=start_from)


def _reference_problems(cfg, earlier: list[str]) -> list[str]:
    """Teachers named by stage (``teachers: [{stage: baseline}]``) must be earlier stages."""
    problems = []
    for i, teacher in enumerate(getattr(cfg, "teachers", None) or []):
        stage = getattr(teacher, "stage", None)
        if stage is not None and stage not in earlier:
            problems.append(
                f"teachers[{i}].stage: {stage!r} is not an earlier stage{did_you_mean(stage, earlier)}; "
                f"earlier stages: {', '.join(earlier)}"
            )
    return problems


MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32  # sections, stages, their options: a real recipe nests 5 or 6 deep
MAX_NODES = 100_000  # YAML values with aliases expanded: a "billion laughs" file stops here


def read_yaml(path: Path) -> Any:
    """A recipe file's data: UTF-8 YAML of bounded size, nesting and alias expansion, each
    violation a ``ConfigError`` naming the file."""
    source = str(path)
    if path.is_dir():
        raise ConfigError(f"{source!r} is a folder; give a recipe .yaml file", source)
    raw = path.read_bytes()
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"the file is {len(raw):,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}", source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); save the recipe as UTF-8", source
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _check_nodes(node, source)
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source) from None
    except RecursionError:
        raise ConfigError(
            f"nested deeper than a recipe can be (at most {MAX_DEPTH} levels)", source
        ) from None
    finally:
        loader.dispose()


def _check_nodes(root, source: str) -> None:
    """Walk the YAML node graph without recursion, counting an alias's target every time it is
    used (what construction would expand)."""
    stack, seen = [(root, 1)] if root is not None else [], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than a recipe can be (at most {MAX_DEPTH} levels)", source)
        if seen > MAX_NODES:
            raise ConfigError(
                f"more than {MAX_NODES:,} values once aliases are expanded; is it an alias bomb?", source
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend([(key, depth + 1), (value, depth + 1)])


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
    return recipe_from_dict(read_yaml(path), str(path))
