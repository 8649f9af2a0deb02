"""``strategy="auto"``: choose the strategy and its hyperparameters from the support set itself.

1. The users with >= 2 support items are cut into ``auto_folds`` disjoint groups; in fold f the
   LAST support item of group f's users is the inner-validation target (history = their earlier
   support items) and everything else is inner training data (never a query item).
2. Every candidate (``zero_shot`` first, then ``AdaptConfig.auto_candidates`` or
   ``DEFAULT_AUTO_CANDIDATES``: strategy + lr / rank / ... overrides) is trained on each fold
   with early stopping on that fold's inner NDCG@10; its score is the mean of the folds' best
   NDCG@10 and its pass count the rounded mean of their best passes. ``zero_shot`` is scored on
   the same targets without training.
3. The best-scoring candidate wins (ties: the earlier candidate, so zero_shot beats a candidate
   that does not improve on it) and is retrained on the WHOLE support for its pass count.

``result.info["candidates"]`` records every candidate with its per-fold and mean scores and
``result.info["chosen"]`` the winner.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

import numpy as np

from ..data.splits import UserSequence
from ..errors import ConfigError
from .config import (
    DEFAULT_AUTO_CANDIDATES,
    TRAINED_STRATEGIES,
    AdaptConfig,
    check_strategy,
)
from .fitting import (
    SELECTION_METRIC,
    AdaptResult,
    fit_strategy,
    has_pairs,
    inner_min_len,
    inner_score,
    inner_split,
    train_strategy,
    training_windows,
    zero_shot_result,
)

log = logging.getLogger(__name__)


def _candidate_config(cfg: AdaptConfig, cand: dict) -> tuple[str, AdaptConfig]:
    cand = dict(cand)
    strategy = check_strategy(cand.pop("strategy", ""))
    if strategy == "auto":
        raise ConfigError("auto_candidates cannot contain 'auto'")
    return strategy, cfg.with_overrides(**cand) if cand else cfg


def auto_adapt(base, support: Sequence[UserSequence], cfg: AdaptConfig, *, valid=None,
               fingerprint: str, info: dict, t0: Optional[float] = None) -> AdaptResult:
    t0 = time.perf_counter() if t0 is None else t0
    cands = [{"strategy": "zero_shot"}] + [dict(c) for c in (cfg.auto_candidates or DEFAULT_AUTO_CANDIDATES)]
    objective = base.config.objective
    def degraded(msg: str):
        # too little support to train and validate a candidate: zero-shot, with the reason recorded
        log.warning(msg)
        res = zero_shot_result(base, cfg, fingerprint, dict(info, degraded=msg, chosen={"strategy": "zero_shot"}))
        res.info["seconds"] = time.perf_counter() - t0
        return res

    if not has_pairs(support, objective) and not valid:
        return degraded("auto: a causal model needs users with 2 or more support items to train and validate "
                        "a candidate; every user has 1, so using zero_shot (support items as history only)")

    # inner folds: (training sequences, validation examples)
    if valid:
        folds = [(list(support), list(valid))]
    else:
        min_len = inner_min_len(objective)
        n_eligible = sum(1 for s in support if len(s) >= min_len)
        n_folds = max(1, min(cfg.auto_folds, n_eligible))
        if n_folds == 1:
            folds = [inner_split(support, cfg.inner_valid_frac, cfg.seed, min_len=min_len)]
        else:
            folds = [inner_split(support, seed=cfg.seed, fold=f, folds=n_folds, min_len=min_len)
                     for f in range(n_folds)]

    folds = [(tr, va) for tr, va in folds if training_windows(tr, cfg, base.config.objective)]
    if not folds:
        return degraded("auto: too few support items to both train and validate a candidate; using "
                        "zero_shot (support items as history only)")
    records: list[dict[str, Any]] = []
    for cand in cands:
        strategy, ccfg = _candidate_config(cfg, cand)
        rec: dict[str, Any] = {**cand, "strategy": strategy, "fold_scores": [], "fold_epochs": []}
        t1 = time.perf_counter()
        for train_seqs, inner_valid in folds:
            if strategy == "zero_shot":
                rec["fold_scores"].append(inner_score(base, inner_valid))
                rec["fold_epochs"].append(0)
                continue
            if strategy not in TRAINED_STRATEGIES:
                raise ConfigError(f"auto cannot use strategy {strategy!r}")
            _, res = train_strategy(base, strategy, ccfg, train_seqs, inner_valid)
            rec["fold_scores"].append(float(res.best_valid.get(SELECTION_METRIC, float("nan"))))
            rec["fold_epochs"].append(int(res.best_epoch))
        rec["inner_ndcg@10"] = float(np.mean(rec["fold_scores"]))
        rec["passes"] = int(max(1, round(float(np.mean(rec["fold_epochs"]))))) if strategy != "zero_shot" else 0
        rec["seconds"] = time.perf_counter() - t1
        records.append(rec)
        log.info("auto candidate %s: inner NDCG@10 %.4f", cand, rec["inner_ndcg@10"])

    scores = [r["inner_ndcg@10"] for r in records]
    best_i = int(np.nanargmax(scores))  # first maximum: zero_shot wins ties
    chosen = records[best_i]
    info = dict(info, candidates=records, chosen={k: v for k, v in chosen.items()
                                                  if k not in ("fold_scores", "fold_epochs")},
                n_inner_valid=int(sum(len(v) for _, v in folds)), n_folds=len(folds))
    strategy, ccfg = _candidate_config(cfg, {k: v for k, v in cands[best_i].items()})
    if strategy == "zero_shot":
        res = zero_shot_result(base, ccfg, fingerprint, info)
        res.info["requested_strategy"] = "auto"
        res.info["seconds"] = time.perf_counter() - t0
        res.artifact.info = res.info
        return res
    if valid:
        # the explicit validation set is not part of the support: keep the early-stopped fit
        res = fit_strategy(base, support, strategy, ccfg, valid=valid, fingerprint=fingerprint,
                           info=info, t0=t0)
    else:
        res = fit_strategy(base, support, strategy, ccfg, fingerprint=fingerprint, info=info, t0=t0,
                           epochs=chosen["passes"])
    res.info["requested_strategy"] = "auto"
    return res
