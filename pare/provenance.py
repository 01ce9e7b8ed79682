"""Where a figure came from: the code (git commit, uncommitted changes, the source files that
ran), the command, when, how long, and the machine. Written beside every benchmark result and
every ``results.json``, so a number can always be traced to the code that produced it."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

# the package's own folder: its checkout (if any) is the code that ran, whatever the cwd
_PACKAGE = Path(__file__).resolve().parent
# benchmark results are written while a run is in progress: they are outputs, not code
_NOT_CODE = ":(exclude)benchmarks/results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What timings depend on: CPU, threads, library versions (recorded beside every result)."""
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def repo_root(path: Path = _PACKAGE) -> Path | None:
    """The git checkout holding ``path``, or None (an installed wheel, a copied tree)."""
    top = _git("rev-parse", "--show-toplevel", cwd=path)
    return Path(top) if top else None


def git_state(path: Path = _PACKAGE) -> dict:
    """``{"commit", "dirty"}`` of the checkout holding ``path``; both None outside a checkout.
    ``dirty``: tracked or untracked (not ignored) changes anywhere but benchmark outputs."""
    root = repo_root(path)
    if root is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--", ".", _NOT_CODE, cwd=root)
    return {"commit": _git("rev-parse", "HEAD", cwd=root), "dirty": None if status is None else status != ""}


def loaded_sources(root: Path | None) -> list[str]:
    """The checkout's Python files this process has imported or is running, relative to ``root``:
    what a result depends on, so a later change to any of them makes the result stale."""
    if root is None:
        return []
    files = {Path(sys.argv[0]).resolve()} if sys.argv and sys.argv[0] else set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file:
            files.add(Path(file).resolve())
    inside = set()
    for f in files:
        if f.suffix == ".py" and f.is_relative_to(root) and ".venv" not in f.parts and f.is_file():
            inside.add(f.relative_to(root).as_posix())
    return sorted(inside - _idle_techniques(root, inside))


def _idle_techniques(root: Path, files: set[str]) -> set[str]:
    """Files of techniques that only the registry imported and that never ran: their code cannot
    have changed a figure, so a later edit to them leaves the result fresh. A technique counts
    as soon as it ran, or the script or a loaded pare module outside the techniques names it."""
    from pare.registry import ran, techniques

    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    readers = [root / f for f in files if f.startswith("pare/") and not f.startswith("pare/techniques/")]
    texts = [p.read_text(errors="replace") for p in [*readers, script] if p is not None and p.is_file()]
    idle = set()
    for name in set(techniques()) - ran():
        package = f"pare/techniques/{name}/"
        if not any(f"pare.techniques.{name}" in t for t in texts):
            idle |= {f for f in files if f.startswith(package)}
    return idle


@dataclass
class Clock:
    """Started when the work starts; ``provenance()`` when it ends (or after each step)."""

    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    _t0: float = field(default_factory=time.perf_counter)
    _git: dict = field(default_factory=git_state)  # the code as it was when the work began

    def provenance(self) -> dict:
        root = repo_root()
        return {
            **self._git,
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self._t0, 3),
            "sources": loaded_sources(root),
        }
