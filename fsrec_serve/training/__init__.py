"""Training: pretraining loop, batches, augmentation, schedules, early stopping, checkpoints."""

from . import augment
from .batches import make_training_batches, make_windows, window_size
from .config import TrainConfig
from .fitted import DEFAULT_OBJECTIVE, DataStats, FittedConfig, data_stats, fitted_config, recommended_config
from .loop import TrainLoopResult, parameter_groups, resolve_device, set_seed, train_loop
from .pretrain import (
    PretrainResult, build_model, default_evaluate_fn, default_model_config, default_train_config, pretrain,
    pretrain_candidate_mask,
)
from .schedules import linear_warmup_decay

__all__ = [
    "TrainConfig", "DEFAULT_OBJECTIVE", "DataStats", "FittedConfig", "data_stats", "fitted_config",
    "recommended_config", "make_training_batches",
    "make_windows", "window_size", "TrainLoopResult", "train_loop", "parameter_groups",
    "resolve_device", "set_seed", "PretrainResult", "pretrain", "build_model",
    "default_evaluate_fn", "default_model_config", "default_train_config", "pretrain_candidate_mask",
    "linear_warmup_decay", "augment",
]
