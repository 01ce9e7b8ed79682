"""What a model is for: the loss it trains with, the outputs it is judged by, the metrics.

The runner, the training loop and the techniques ask the split's task instead of assuming
classification; a task kind is one small class.
"""

from pare.errors import ConfigError
from pare.tasks.base import Evaluation, Task
from pare.tasks.classification import Classification
from pare.tasks.language_model import LanguageModel
from pare.tasks.regression import Regression
from pare.tasks.retrieval import Retrieval

TASKS: dict[str, Task] = {t.kind: t for t in (Classification(), Retrieval(), LanguageModel(), Regression())}


def get_task(kind: str) -> Task:
    if kind not in TASKS:
        raise ConfigError(f"unknown task kind {kind!r}; known: {', '.join(TASKS)}")
    return TASKS[kind]


__all__ = [
    "Task",
    "Evaluation",
    "Classification",
    "Retrieval",
    "LanguageModel",
    "Regression",
    "TASKS",
    "get_task",
]
