"""Knowledge distillation: soft targets, features, multi-teacher, born-again, contrastive."""

from pare.techniques.distill.apply import distill
from pare.techniques.distill.config import DistillConfig

__all__ = ["distill", "DistillConfig"]
