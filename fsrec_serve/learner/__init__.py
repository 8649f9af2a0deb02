"""The online learner (``fsrec learn``): events -> histories -> per-user parameters, and periodic
guarded re-fine-tuning rolled out to Triton."""

from .config import LearnerConfig
from .worker import Learner, LearnerStats, save_served_model

__all__ = ["Learner", "LearnerConfig", "LearnerStats", "save_served_model"]
