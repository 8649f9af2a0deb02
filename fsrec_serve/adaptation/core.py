"""``adapt()``: few-shot adaptation of a pretrained FsRecModel to a cohort's support sets.

Objective: next-item prediction *inside* the support sequences, with the model's own objective
(the training package's batches: cloze masks, a share of them on the last item, which is the
inference situation "history + [MASK]"; causal: every support item predicts the next one).
Query items are never seen: ``adapt`` only receives the support.

A trained strategy (``head_only``, ``full``, ``lora``, ``adalora``, ``ia3``, ``prefix``,
``prompt``) runs ``fitting.fit_strategy`` (inner split, early stopping, refit: see that module);
``auto`` runs ``auto.auto_adapt``.

Support sets where no user has two items (k = 1) contain no (history, target) pair to train or
validate on: every strategy then returns the zero-shot model and says so in ``info["degraded"]``.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..data.splits import Example, UserSequence
from .artifact import model_fingerprint
from .auto import auto_adapt
from .config import AdaptConfig, check_strategy
from .fitting import (
    AdaptResult,
    check_support,
    fit_strategy,
    has_pairs,
    log,
    zero_shot_result,
)
from .strategies import fsrec_of


# -- the public entry point --------------------------------------------------------------------
def adapt(
    model,  # pretrained FsRecModel (not modified: every strategy works on a deep copy)
    support: Sequence[UserSequence],  # the cohort's support sequences (item indices, newest last)
    strategy: str = "auto",  # zero_shot | head_only | full | lora | adalora | ia3 | prefix | prompt | auto
    config: Optional[AdaptConfig] = None,
    valid: Optional[Sequence[Example]] = None,  # explicit early-stopping examples (default: inner split)
) -> AdaptResult:
    """Adapt ``model`` to the users of ``support`` and return the adapted model and its artifact."""
    t0 = time.perf_counter()
    cfg = config or AdaptConfig()
    strategy = check_strategy(strategy)
    base = fsrec_of(model)
    support = check_support(support, base.config.num_items)
    fingerprint = model_fingerprint(base)
    info: dict[str, Any] = {
        "requested_strategy": strategy,
        "n_users": len(support),
        "n_support_items": int(sum(len(s) for s in support)),
        "k_mean": float(np.mean([len(s) for s in support])),
    }
    if strategy == "auto":
        return auto_adapt(base, support, cfg, valid=valid, fingerprint=fingerprint, info=info, t0=t0)
    if strategy == "zero_shot":
        res = zero_shot_result(base, cfg, fingerprint, info)
        res.info["seconds"] = time.perf_counter() - t0
        return res
    if not has_pairs(support, base.config.objective) and not valid:
        msg = (
            f"strategy {strategy!r} on a causal model needs at least one user with 2 or more "
            "support items (a history and a target to learn from); every user here has 1, so the "
            "support items are used as history only and the model is NOT updated (zero_shot)"
        )
        log.warning(msg)
        res = zero_shot_result(base, cfg, fingerprint, dict(info, degraded=msg))
        res.info["seconds"] = time.perf_counter() - t0
        return res
    return fit_strategy(base, support, strategy, cfg, valid=valid, fingerprint=fingerprint,
                        info=info, t0=t0)


def adapt_each_user(
    model, support: Sequence[UserSequence], strategy: str = "lora", config: Optional[AdaptConfig] = None,
) -> Iterator[tuple[str, AdaptResult]]:
    """Per-user micro-tuning: adapt a separate copy to each user's own support set.

    Yields ``(user, AdaptResult)`` one at a time so that only one adapted copy lives in memory
    (score the user's query, then drop it)."""
    base = fsrec_of(model)
    support = check_support(support, base.config.num_items)
    for s in support:
        yield s.user, adapt(base, [s], strategy=strategy, config=config)
