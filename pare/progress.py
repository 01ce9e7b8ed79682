"""One console and one kind of progress bar for all long work (training, evaluation, profiling).

Bars draw only on a terminal; in logs and tests they stay silent and a finished task prints
one line instead, so CI output stays readable.
"""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_console(stderr: bool) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:  # logs and CI: wide enough that tables are not squeezed
        c = Console(stderr=stderr, highlight=False, width=200)
    return c


console = make_console(stderr=True)  # progress and log lines; results go to stdout


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            info = "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
            )
            self._progress.update(self._task, advance=n, info=info)


@contextlib.contextmanager
def progress_bar(description: str, total: int):
    if not console.is_terminal:
        yield _Bar(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))


@contextlib.contextmanager
def status(message: str):
    """A spinner for work without countable steps (evaluation, export, timing); a line in logs."""
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
