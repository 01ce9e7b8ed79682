"""pare: make neural networks smaller and faster, and prove it.

The Python API mirrors the CLI::

    import pare
    results = pare.run("default", out="runs/default")     # pare run default --out runs/default
    recipe = pare.load_recipe("breast_cancer")             # pare validate breast_cancer
    ev = pare.evaluate(model, split.test, split.classes)   # quality with bootstrap CIs
    cost = pare.profile(model, example)                    # params, FLOPs, latency, memory
"""

from pare.cost import profile  # noqa: E402
from pare.data import load_dataset, make_splits  # noqa: E402
from pare.errors import ConfigError, DataError, PareError, UnsupportedModelError  # noqa: E402
from pare.evaluate import evaluate  # noqa: E402
from pare.models import build_model  # noqa: E402
from pare.recipes import load_recipe  # noqa: E402
from pare.recipes.runner import run  # noqa: E402
from pare.registry import register, techniques  # noqa: E402
from pare.training import fit, lr_find  # noqa: E402
from pare.version import __version__  # noqa: E402,F401


def compress(model, config, split, *, baseline=None, train=None, seed: int = 0, out_dir=None):
    """Apply one technique, chosen by the type of ``config``, to a copy of ``model``.

    Returns ``(model, info)``. ``split`` supplies training/validation data to techniques that
    fine-tune or calibrate; ``baseline`` is the teacher for distillation (default: ``model``).
    """
    import copy
    import tempfile
    from pathlib import Path

    from pare.recipes.context import StageContext
    from pare.recipes.schema import TrainConfig
    from pare.registry import technique_for

    technique = technique_for(config)
    ctx = StageContext(
        split=split,
        baseline=baseline or model,
        train_config=train or TrainConfig(),
        seed=seed,
        out_dir=Path(out_dir or tempfile.mkdtemp(prefix="pare-")),
        name=technique.name,
        stages={"baseline": baseline or model},
    )
    return technique.apply(copy.deepcopy(model), config, ctx)


__all__ = [
    "__version__",
    "run",
    "load_recipe",
    "evaluate",
    "profile",
    "compress",
    "fit",
    "lr_find",
    "build_model",
    "load_dataset",
    "make_splits",
    "register",
    "techniques",
    "PareError",
    "ConfigError",
    "DataError",
    "UnsupportedModelError",
]
