"""What a recipe may make pare import. A recipe is code, like any Python config system: a
``factory`` names a function that ``pare run`` calls, and ``model.hf`` may name a package that
is imported to find its model folder. Safe mode limits both to modules the user trusts."""

from __future__ import annotations

import os

from pare.errors import UnsupportedModelError


def safe_mode() -> bool:
    """``PARE_SAFE=1`` (or ``pare --safe``): recipes from elsewhere may only name factories and
    model packages from the zoo or the modules listed in ``PARE_ALLOW`` (comma-separated)."""
    return os.environ.get("PARE_SAFE", "") not in ("", "0")


def _allowed(module: str) -> bool:
    allowed = [m.strip() for m in os.environ.get("PARE_ALLOW", "").split(",") if m.strip()]
    return any(module == m or module.startswith(m + ".") for m in allowed)


def refuse_unsafe(module: str, what: str) -> None:
    if safe_mode() and not _allowed(module):
        raise UnsupportedModelError(
            f"{what}: safe mode (PARE_SAFE) refuses to import {module!r}, which is not in PARE_ALLOW "
            f"({os.environ.get('PARE_ALLOW') or 'empty'}); if you trust it, add it: PARE_ALLOW={module}"
        )
