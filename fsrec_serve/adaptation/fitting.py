"""The machinery behind ``adapt()``: support checks, the inner split, training one strategy
with the training package's ``train_loop`` and early stopping on the inner validation,
zero-shot results and artifacts. ``core.adapt`` and ``auto.auto_adapt`` both build on it.

Procedure for a trained strategy (``head_only``, ``full``, ``lora``, ``adalora``, ``ia3``,
``prefix``, ``prompt``), ``fit_strategy``:

1. inner split of the support: for ``inner_valid_frac`` of the users with >= 2 support items, the
   LAST support item is held out as an inner-validation target (history = their earlier support
   items); everything else is inner training data;
2. train on the inner training data with AdamW, warmup/decay and early stopping on the inner
   NDCG@10 (``train_loop`` of the training package); the best pass count is kept;
3. ``refit``: retrain from the pretrained weights on the WHOLE support for that many passes.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.splits import Example, UserSequence
from ..errors import AdaptationError, SupportSetError, TrainingError
from .artifact import AdaptArtifact, merge
from .config import DEFAULT_LR, AdaptConfig
from .strategies import Prepared, count_trainable, fsrec_of, prepare, steps_per_epoch

log = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@10"


@dataclass
class AdaptResult:
    model: Any  # the adapted scorer (next_item_scores / predict_ratings), eval mode
    artifact: AdaptArtifact  # what to save (AdaptArtifact.save) and re-apply (load_adapted)
    strategy: str  # strategy actually used (auto's choice; "zero_shot" when degraded)
    info: dict = field(default_factory=dict)  # inner scores, candidates, timing, messages

    def merged_model(self):
        """Plain FsRecModel with the adapter folded in (for export); see artifact.merge."""
        return merge(self.model, self.strategy)

    def save(self, directory) -> Any:
        return self.artifact.save(directory)


# -- support checks and inner split -------------------------------------------------------------
def check_support(support: Sequence, num_items: int) -> list[UserSequence]:
    """Validate a support set; raise SupportSetError with the fix when it is unusable."""
    if support is None or len(support) == 0:
        raise SupportSetError(
            "the support set is empty: adaptation needs at least one user with at least one "
            "interaction (support=[UserSequence(user, items, ratings)]); with no interactions at "
            "all, recommend from popularity instead"
        )
    out = []
    for s in support:
        if not isinstance(s, UserSequence):
            raise SupportSetError(
                f"support entries must be UserSequence(user, items, ratings), got {type(s).__name__}"
            )
        if len(s.items) == 0:
            raise SupportSetError(
                f"user {s.user!r} has an empty support set; drop the user or give it at least one item"
            )
        bad = [i for i in s.items if not 1 <= int(i) <= num_items]
        if bad:
            raise SupportSetError(
                f"user {s.user!r}: item indices {bad[:5]} are outside 1..{num_items}; map raw ids "
                "with the model's item_map (model.item_map.indices(raw_ids))"
            )
        ratings = list(s.ratings) if len(s.ratings) == len(s.items) else [1.0] * len(s.items)
        out.append(UserSequence(s.user, [int(i) for i in s.items], [float(r) for r in ratings]))
    return out


def has_pairs(support: Sequence[UserSequence], objective: str = "causal") -> bool:
    """True when the support holds a (history, target) pair to learn from: any item for a cloze
    model (the first item is predicted from an empty history, i.e. from [MASK] alone), a user
    with >= 2 items for a causal model (its first position already holds an item)."""
    if objective == "cloze":
        return any(len(s) >= 1 for s in support)
    return any(len(s) >= 2 for s in support)


def inner_split(
    support: Sequence[UserSequence], frac: float = 0.5, seed: int = 0, fold: int = 0, folds: int = 1,
    min_len: int = 2,
) -> tuple[list[UserSequence], list[Example]]:
    """Hold out the LAST support item of some users as inner-validation targets.

    ``folds == 1``: a random ``frac`` of the users with >= ``min_len`` items (at least one);
    ``folds > 1``: those users are cut into ``folds`` disjoint groups and group ``fold`` is held out.
    ``min_len=1`` (cloze models) also holds out single-item users: their item becomes a target
    with an EMPTY history. Returns (training sequences, validation examples)."""
    eligible = [i for i, s in enumerate(support) if len(s) >= max(1, min_len)]
    if not eligible:
        return list(support), []
    perm = np.random.default_rng(seed).permutation(eligible)
    if folds <= 1:
        held = perm[: max(1, int(round(frac * len(perm))))]
    else:
        held = np.array_split(perm, folds)[fold % folds]
    held_set = set(int(i) for i in held)
    train, valid = [], []
    for i, s in enumerate(support):
        if i in held_set:
            if len(s) > 1:
                train.append(UserSequence(s.user, s.items[:-1], s.ratings[:-1]))
            valid.append(Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1]))
        else:
            train.append(s)
    return train, valid


def inner_min_len(objective: str) -> int:
    return 1 if objective == "cloze" else 2


# -- training one strategy ----------------------------------------------------------------------
def train_config_for(cfg: AdaptConfig, strategy: str, epochs: Optional[int] = None):
    """The training package's TrainConfig for one adaptation run (``AdaptConfig.train_config``)."""
    return cfg.train_config(strategy, epochs)


def training_windows(sequences: Sequence[UserSequence], cfg: AdaptConfig, objective: str) -> list[UserSequence]:
    """What train_loop sees: every prefix of the support sequences (``examples="prefixes"``,
    cloze: the prefix's last item is masked and predicted from the items before it) or the
    sequences themselves. Causal models already predict every next item of a sequence."""
    if cfg.examples == "sequences" or objective == "causal":
        return list(sequences)
    out = []
    for s in sequences:
        for t in range(1, len(s) + 1):  # t = 1: the first item from [MASK] alone
            out.append(UserSequence(s.user, s.items[:t], s.ratings[:t]))
    return out


def _n_windows(sequences: Sequence[UserSequence], objective: str) -> int:
    min_len = 1 if objective == "cloze" else 2
    return sum(1 for s in sequences if len(s) >= min_len)


class _StopAdaptation(Exception):
    """Raised from train_loop's epoch callback when the inner validation stops improving."""


@dataclass
class InnerRun:
    """Summary of one training run on (part of) the support set."""

    best_epoch: int = 0  # pass whose state was kept (0 = none better than before training)
    best_valid: dict = field(default_factory=dict)  # {"ndcg@10": ...} of that pass
    epochs_run: int = 0  # passes actually run
    history: list = field(default_factory=list)  # per-pass {"epoch", "loss", "valid_ndcg@10"}
    stopped_early: bool = False


class _InnerTracker:
    """Early stopping on the inner validation (which may hold empty-history targets, something
    train_loop's own validation refuses): scores after every pass, keeps the best state."""

    def __init__(self, model, examples, patience: int):
        self.model, self.examples, self.patience = model, list(examples), int(patience)
        self.best, self.best_state, self.bad = -1.0, None, 0
        self.run = InnerRun()

    def __call__(self, rec: dict) -> None:
        score = inner_score(self.model, self.examples)
        self.model.train()
        self.run.epochs_run = int(rec["epoch"])
        self.run.history.append({"epoch": rec["epoch"], "loss": rec.get("loss"), "valid_ndcg@10": score})
        if score > self.best:
            self.best, self.bad = score, 0
            self.run.best_epoch, self.run.best_valid = int(rec["epoch"]), {SELECTION_METRIC: score}
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad += 1
            if self.patience and self.bad >= self.patience:
                self.run.stopped_early = True
                raise _StopAdaptation()

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def train_strategy(
    base, strategy: str, cfg: AdaptConfig, sequences: Sequence[UserSequence],
    valid_examples: Optional[Sequence[Example]] = None, epochs: Optional[int] = None,
):
    """Copy ``base``, make it trainable for ``strategy`` and train it on ``sequences`` with the
    training package's ``train_loop``.

    Returns (Prepared, InnerRun). With ``valid_examples`` every pass is scored (inner NDCG@10),
    training stops after ``cfg.patience`` passes without improvement and the best pass is restored."""
    from ..training import set_seed, train_loop

    base = fsrec_of(base)
    n_epochs = int(epochs or cfg.epochs)
    objective = base.config.objective
    windows = training_windows(sequences, cfg, objective)
    set_seed(cfg.seed)  # PEFT initialises its adapters from torch's RNG
    model = copy.deepcopy(base)
    total = n_epochs * steps_per_epoch(_n_windows(windows, objective), cfg.batch_size)
    prep: Prepared = prepare(model, strategy, cfg, total_steps=total)
    tc = train_config_for(cfg, strategy, n_epochs)
    if cfg.examples == "prefixes" and objective == "cloze":
        tc.last_item_mask_ratio = 1.0  # each prefix predicts its last item
    tracker = _InnerTracker(prep.model, valid_examples, cfg.patience) if valid_examples else None
    run = InnerRun()

    def on_epoch_end(rec: dict) -> None:
        if prep.on_epoch_end is not None:
            prep.on_epoch_end(rec)  # AdaLoRA's rank allocation
        if tracker is not None:
            tracker(rec)  # may raise _StopAdaptation
        else:
            run.epochs_run = run.best_epoch = int(rec["epoch"])
            run.history.append({"epoch": rec["epoch"], "loss": rec.get("loss")})

    try:
        train_loop(prep.model, windows, tc, valid_examples=None, model_config=base.config,
                   use_ratings=cfg.use_ratings, on_epoch_end=on_epoch_end)
    except _StopAdaptation:
        pass
    except TrainingError as e:
        if "loss became" not in str(e):
            raise
        raise AdaptationError(
            f"strategy {strategy!r}: the adaptation loss diverged (non-finite) at lr={tc.lr:g}; lower "
            f"the learning rate (AdaptConfig(lr={tc.lr / 100:g}) or leave lr=None for the strategy's "
            f"default {DEFAULT_LR.get(strategy, 'n/a')}) or use strategy='auto'. Nothing was saved. ({e})"
        ) from e
    if tracker is not None:
        tracker.restore()
        run = tracker.run
    prep.model.eval()
    return prep, run


def _artifact(prep: Optional[Prepared], strategy: str, cfg: AdaptConfig, fingerprint: str,
              info: dict) -> AdaptArtifact:
    tensors = {}
    peft_model = None
    if prep is not None and strategy != "zero_shot":
        model = fsrec_of(prep.model)
        if strategy == "full":
            tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
        elif prep.extra_modules:
            for mod in prep.extra_modules:
                for n, p in getattr(model, mod).named_parameters():
                    tensors[f"{mod}.{n}"] = p.detach().clone()
        peft_model = prep.peft_model
    return AdaptArtifact(strategy=strategy, config=cfg.to_dict(), base_fingerprint=fingerprint,
                         info=info, peft_model=peft_model, tensors=tensors)


def zero_shot_result(model, cfg: AdaptConfig, fingerprint: str, info: dict) -> AdaptResult:
    m = copy.deepcopy(fsrec_of(model)).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    info = dict(info, strategy="zero_shot", trainable_params=0)
    return AdaptResult(model=m, artifact=_artifact(None, "zero_shot", cfg, fingerprint, info),
                       strategy="zero_shot", info=info)


@torch.no_grad()
def inner_score(model, examples: Sequence[Example], batch_size: int = 256) -> float:
    """Mean NDCG@10 of ``examples`` (full ranking, history and padding excluded, pessimistic
    ties) -- the same numbers as evaluate_next_item, but an EMPTY history is allowed (a cloze
    model then reads [MASK] alone)."""
    from ..evaluation.metrics import ndcg_at_k, rank_of_targets
    from ..model import pad_histories

    if not examples:
        return float("nan")
    base = fsrec_of(model)
    L = base.config.max_seq_len
    dev = next(base.parameters()).device
    was = model.training
    model.eval()
    ranks = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        scores = model.next_item_scores(pad_histories([e.history for e in chunk], L).to(dev)).float().cpu()
        exclude = torch.zeros_like(scores, dtype=torch.bool)  # [B, N]
        exclude[:, 0] = True
        for j, e in enumerate(chunk):
            if e.history:
                exclude[j, torch.as_tensor(e.history, dtype=torch.long)] = True
        targets = torch.tensor([e.target for e in chunk], dtype=torch.long)
        ranks.append(rank_of_targets(scores, targets, exclude))
    if was:
        model.train()
    return float(ndcg_at_k(torch.cat(ranks), 10).mean())


def fit_strategy(base, support, strategy: str, cfg: AdaptConfig, *, valid=None, fingerprint: str,
                 info: dict, t0: float, epochs: Optional[int] = None) -> AdaptResult:
    """Inner split + early stopping + refit (or a fixed number of passes when ``epochs`` is given)."""
    info = dict(info, strategy=strategy, lr=cfg.lr_for(strategy))
    if epochs is not None:  # the pass count is already known (auto's final fit)
        prep, res = train_strategy(base, strategy, cfg, support, None, epochs=epochs)
        info.update(passes=int(epochs), refit=True)
    else:
        if valid:
            train_seqs, inner_valid = list(support), list(valid)
        else:
            train_seqs, inner_valid = inner_split(support, cfg.inner_valid_frac, cfg.seed,
                                                  min_len=inner_min_len(base.config.objective))
        if not training_windows(train_seqs, cfg, base.config.objective):
            msg = (f"strategy {strategy!r}: after holding out the inner-validation items no "
                   "(history, target) pair is left to train on (too few support items); the model "
                   "is NOT updated (zero_shot)")
            log.warning(msg)
            res0 = zero_shot_result(base, cfg, fingerprint, dict(info, degraded=msg))
            res0.info["seconds"] = time.perf_counter() - t0
            return res0
        prep, res = train_strategy(base, strategy, cfg, train_seqs, inner_valid)
        zs = inner_score(base, inner_valid)
        best = float(res.best_valid.get(SELECTION_METRIC, float("nan")))
        info["inner"] = {
            "n_valid": len(inner_valid),
            "zero_shot_ndcg@10": zs,
            "ndcg@10": best,
            "best_epoch": int(res.best_epoch),
            "epochs_run": int(res.epochs_run),
            "curve": [round(float(r.get("valid_ndcg@10", float("nan"))), 5) for r in res.history],
            "stopped_early": bool(res.stopped_early),
        }
        if best < zs:
            log.warning("%s: inner-validation NDCG@10 %.4f is below zero-shot %.4f; consider "
                        "strategy='auto' (it falls back to zero_shot)", strategy, best, zs)
        if cfg.refit and not valid:
            prep, res = train_strategy(base, strategy, cfg, support, None, epochs=max(1, res.best_epoch))
            info.update(passes=int(res.epochs_run), refit=True)
        else:
            info.update(passes=int(res.best_epoch), refit=False)
    info["trainable_params"] = count_trainable(prep.model)
    info["seconds"] = time.perf_counter() - t0
    art = _artifact(prep, strategy, cfg, fingerprint, info)
    return AdaptResult(model=prep.model, artifact=art, strategy=strategy, info=info)
