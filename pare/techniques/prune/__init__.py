"""Pruning: ``prune`` in recipes. See config.py for the options."""

from pare.techniques.prune.apply import prune
from pare.techniques.prune.config import PruneConfig

__all__ = ["prune", "PruneConfig"]
