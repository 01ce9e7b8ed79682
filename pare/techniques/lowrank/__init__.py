"""Low-rank factorization: SVD for Linear layers, Tucker-2 or spatial SVD for convolutions."""

from pare.techniques.lowrank.apply import lowrank
from pare.techniques.lowrank.config import LowRankConfig

__all__ = ["lowrank", "LowRankConfig"]
