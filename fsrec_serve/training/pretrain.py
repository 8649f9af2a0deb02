"""Pretraining on the warm users' leave-one-out training sequences."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..data.run_record import RUN_FILE, RunRecord
from ..errors import ConfigError
from ..model import FsRecConfig, FsRecModel
from .config import TrainConfig
from .fitted import DEFAULT_OBJECTIVE, recommended_config
from .loop import METRICS_FILE, TrainLoopResult, has_varying_ratings, set_seed, train_loop

log = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.json"
RUN_INFO_FILE = RUN_FILE  # fsrec_run.json: the RunRecord (data source, split, objective, summary)


@dataclass
class PretrainResult:
    model: FsRecModel  # best validation state, item_map set, eval mode
    history: list[dict] = field(default_factory=list)  # per-epoch metrics (see metrics.jsonl)
    best_epoch: int = 0  # 1-based epoch of the kept state
    best_valid: dict = field(default_factory=dict)  # validation metrics of that epoch
    seconds: float = 0.0  # wall-clock seconds of training (evaluations included)
    peak_mb: float = 0.0  # peak resident memory of the process (MB)
    output_dir: Optional[Path] = None  # where the checkpoint was written, if anywhere
    seconds_to_best: float = 0.0  # wall-clock seconds until the end of the best epoch
    stopped_early: bool = False  # True when patience ran out


def default_model_config(splits, objective: str = DEFAULT_OBJECTIVE, **overrides) -> FsRecConfig:
    """FsRecConfig for ``splits``: the settings fitted to their statistics (fitted.py), the
    catalogue size and side-feature width from the splits, and a rating head only when ratings vary."""
    rec = recommended_config(splits, objective)
    kw = dict(rec.model)
    kw.update(
        num_items=len(splits.item_map),
        num_item_features=0 if splits.item_features is None else int(splits.item_features.shape[1]),
        rating_head=has_varying_ratings(splits.warm),
    )
    kw.update(overrides)
    return FsRecConfig(**kw)


def default_train_config(splits, objective: str = DEFAULT_OBJECTIVE, **overrides) -> TrainConfig:
    """TrainConfig with the settings fitted to the splits' statistics (overrides applied)."""
    kw = dict(recommended_config(splits, objective).train)
    kw.update(overrides)
    return TrainConfig(**kw)


def pretrain_candidate_mask(splits, num_items: Optional[int] = None) -> torch.Tensor:
    """[N] bool over score columns: True for the items pretraining may predict (not padding,
    not cold items)."""
    n = (num_items if num_items is not None else len(splits.item_map)) + 1
    mask = torch.ones(n, dtype=torch.bool)
    mask[0] = False
    cold = torch.as_tensor(splits.cold_items, dtype=torch.long)
    if cold.numel():
        mask[cold] = False
    return mask


def build_model(splits, model_config: FsRecConfig) -> FsRecModel:
    """A fresh model for ``splits``: id map attached, side features loaded, cold items' id
    embeddings zeroed (they get no gradient: never in an input, masked out of the softmax)."""
    if model_config.num_items != len(splits.item_map):
        raise ConfigError(
            f"model_config.num_items={model_config.num_items} but the splits have "
            f"{len(splits.item_map)} items; build the config with default_model_config(splits)"
        )
    model = FsRecModel(model_config)
    model.item_map = splits.item_map
    if model_config.num_item_features > 0:
        if splits.item_features is None:
            raise ConfigError(
                "model_config.num_item_features > 0 but the data set has no item features; "
                "set num_item_features=0"
            )
        if splits.item_features.shape[1] != model_config.num_item_features:
            raise ConfigError(
                f"num_item_features={model_config.num_item_features} but the features have "
                f"{splits.item_features.shape[1]} columns"
            )
        model.set_item_features(splits.item_features)
    cold = torch.as_tensor(splits.cold_items, dtype=torch.long)
    if cold.numel():
        with torch.no_grad():
            model.item_embeddings.weight[cold] = 0.0
    return model


def run_record(splits, objective: str, res: TrainLoopResult, **extra) -> RunRecord:
    """The record of a finished run on ``splits`` (written as fsrec_run.json)."""
    return RunRecord.for_splits(
        splits, objective=objective, best_epoch=res.best_epoch, best_valid=res.best_valid,
        epochs_run=res.epochs_run, stopped_early=res.stopped_early, seconds=res.seconds,
        seconds_to_best=res.seconds_to_best, peak_mb=res.peak_mb, extra=extra,
    )


def default_evaluate_fn() -> Callable[..., dict]:
    """The validation protocol pretraining early-stops on: ``evaluate_next_item`` (NDCG@10 of
    the validation item, full ranking). pretrain() is the one place where training meets the
    evaluation protocol; train_loop itself only calls the function it is given."""
    from ..evaluation.protocols import evaluate_next_item

    return evaluate_next_item


def pretrain(
    splits,  # fsrec_serve.data.Splits
    model_config: Optional[FsRecConfig] = None,  # default: default_model_config(splits)
    train_config: Optional[TrainConfig] = None,  # default: default_train_config(splits)
    *,
    train_sequences: Optional[Sequence] = None,  # default: splits.loo_train()
    valid_examples: Optional[Sequence] = None,  # default: splits.loo_valid()
    evaluate_fn: Optional[Callable[..., dict]] = None,  # validation metric; default evaluate_next_item
) -> PretrainResult:
    """Pretrain a fresh model on the warm users (leave-one-out training part), early-stopped on
    the validation item's NDCG@10 (full ranking, history excluded, cold items not candidates).

    With ``train_config.output_dir`` the best model is saved there with ``save_pretrained``
    (config.json, weights, item_map.json) together with train_config.json, metrics.jsonl and
    fsrec_run.json (the RunRecord: data source, split config, best epoch, validation metrics).
    """
    objective = model_config.objective if model_config is not None else DEFAULT_OBJECTIVE
    cfg = model_config or default_model_config(splits, objective)
    tc = train_config or default_train_config(splits, objective)
    set_seed(tc.seed)  # the initial weights too: a run does not depend on what ran before it
    model = build_model(splits, cfg)
    cmask = pretrain_candidate_mask(splits, cfg.num_items)
    train_sequences = splits.loo_train() if train_sequences is None else train_sequences
    valid_examples = splits.loo_valid() if valid_examples is None else valid_examples

    out_dir = Path(tc.output_dir) if tc.output_dir else None
    save_fn = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tc.save(out_dir / TRAIN_CONFIG_FILE)

        def save_fn(m, epoch, rec):  # noqa: ANN001
            m.save_pretrained(out_dir)

    res: TrainLoopResult = train_loop(
        model, train_sequences, tc, valid_examples=valid_examples, candidate_mask=cmask,
        model_config=cfg, save_fn=save_fn, evaluate_fn=evaluate_fn or default_evaluate_fn(),
        log_path=(out_dir / METRICS_FILE) if out_dir is not None else None,
    )
    model = res.model
    if out_dir is not None:
        model.save_pretrained(out_dir)  # the restored best state (identical to the last save)
        run_record(splits, cfg.objective, res).save(out_dir)
    return PretrainResult(
        model=model, history=res.history, best_epoch=res.best_epoch, best_valid=res.best_valid,
        seconds=res.seconds, peak_mb=res.peak_mb, output_dir=out_dir,
        seconds_to_best=res.seconds_to_best, stopped_early=res.stopped_early,
    )


def pretrain_dataset(
    dataset: str,  # "ml-100k", "beauty"
    data_dir=None,  # default: FSREC_DATA_DIR
    objective: str = DEFAULT_OBJECTIVE,
    split_config=None,  # fsrec_serve.data.SplitConfig; default SplitConfig()
    model_overrides: Optional[dict] = None,  # FsRecConfig fields over the recommended ones
    train_overrides: Optional[dict] = None,  # TrainConfig fields over the recommended ones
) -> tuple[PretrainResult, Any]:
    """Load ``dataset``, split it and pretrain with the recommended configuration.

    Returns ``(result, splits)``; what ``fsrec train`` runs.
    """
    from ..data import SplitConfig, load_dataset, make_splits

    data = load_dataset(dataset, data_dir)
    splits = make_splits(data, split_config or SplitConfig())
    mc = default_model_config(splits, objective, **(model_overrides or {}))
    tc = default_train_config(splits, objective, **(train_overrides or {}))
    return pretrain(splits, mc, tc), splits
