"""Few-shot protocols: cold-start users (k-shot), cold-start items, continual re-fine-tuning.

Cold-start users (``coldstart_users``)
    Pretraining never saw the cold users (``Splits.cold_users``, held out by ``make_splits``).
    For each k, a cold user's support is their first k interactions and the query the (k+1)-th,
    predicted from the k support items as history; full ranking over the catalogue with the
    support items excluded; HR@10 / NDCG@10 / MRR@10. One adaptation per cohort (all cold users
    with more than k interactions) on the support sets only; ``per_user=True`` adapts a separate
    copy per user instead. ``popularity`` ranks by the number of interactions in the pretraining
    sequences.

Cold-start items (``coldstart_items``)
    Items held out of pretraining (``Splits.cold_items``). Events = interactions of warm users
    (in ``full_sequences``) with a cold item that has an earlier interaction in the user's
    sequence. Each cold item's events in time order (by timestamp where the log has them; by
    (position, user) otherwise): the first ``n_adapt`` are adaptation data, the rest are
    evaluation events (history = the user's preceding items, target = the cold item, full
    ranking, history excluded). Metrics before adaptation (side features only) and after.

Continual re-fine-tuning (``forgetting``)
    New slice = the cold users' sequences without their last item. Before/after adapting on it
    (mixed with replayed warm training sequences): warm users' leave-one-out test NDCG@10
    (forgetting = after / before) and the new users' last-item NDCG@10 (what was gained).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..data.splits import Example, Splits, UserSequence
from ..errors import ConfigError
from ..evaluation.baselines import PopularityModel
from ..evaluation.protocols import evaluate_next_item

KS = (10,)
POPULARITY = "popularity"


def popularity_for(splits: Splits) -> PopularityModel:
    """Popularity over the pretraining sequences (warm users, cold items excluded)."""
    return PopularityModel.fit(splits.warm, len(splits.item_map))


def _metrics(scorer, examples, ks=KS) -> dict[str, float]:
    m = evaluate_next_item(scorer, examples, ks=ks)
    return {k: float(v) for k, v in m.items() if "@" in k or k == "n"}


@dataclass
class StrategyRun:
    strategy: str  # the requested strategy (or "popularity")
    metrics: dict  # hr@10, ndcg@10, mrr@10, n
    seconds: float  # adaptation wall-clock seconds (0 for popularity / zero_shot)
    size_kb: float  # saved adapter / tensor size (0 when nothing is saved)
    info: dict  # AdaptResult.info (chosen strategy, inner scores, ...)
    cpu_seconds: float = 0.0  # CPU time of this process during adaptation (all threads)


def coldstart_users(
    model,  # pretrained FsRecModel (pretraining without the cold users)
    splits: Splits,
    k: int,
    strategies: Sequence[str],  # any of popularity, zero_shot, head_only, ..., auto
    config=None,  # AdaptConfig
    per_user: bool = False,  # micro-tune one copy per user instead of one per cohort
    measure_size: bool = True,
) -> list[StrategyRun]:
    """Run the cold-start-user protocol at one k for every strategy."""
    from ..adaptation import AdaptConfig, adapt, adapt_each_user

    cfg = config or AdaptConfig()
    support, query = splits.support_query(k)
    out = []
    for strategy in strategies:
        if strategy == POPULARITY:
            out.append(StrategyRun(strategy, _metrics(popularity_for(splits), query), 0.0, 0.0, {}))
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        if per_user:
            ranks, infos = [], []
            by_user = {e.user: e for e in query}
            for user, res in adapt_each_user(model, support, strategy, cfg):
                r = evaluate_next_item(res.model, [by_user[user]], ks=KS, return_ranks=True)
                ranks.append(r["ranks"][0])
                infos.append(res.info)
            from ..evaluation.metrics import summarize_ranks

            m = summarize_ranks(np.asarray(ranks), KS)
            m["n"] = len(ranks)
            info = {"per_user": True, "n_users": len(infos),
                    "strategies_used": sorted({i.get("strategy", strategy) for i in infos})}
            size = 0.0
            seconds = (time.perf_counter() - t0) / max(1, len(infos))
        else:
            res = adapt(model, support, strategy=strategy, config=cfg)
            seconds = time.perf_counter() - t0
            m = _metrics(res.model, query)
            info = res.info
            size = res.artifact.size_kb() if measure_size else 0.0
        cpu = (time.process_time() - c0) / (max(1, len(infos)) if per_user else 1)
        out.append(StrategyRun(strategy, m, seconds, size, info, cpu))
    return out


def user_folds(splits: Splits, n_folds: int, seed: int = 0, min_len: int = 11,
               max_cold: Optional[int] = None) -> list[Splits]:
    """Cold-user folds: every eligible user (>= ``min_len`` interactions) is a cold user in
    exactly one fold and a warm (pretraining) user in the others.

    ``splits`` must come from ``make_splits(..., SplitConfig(cold_user_frac=0.0))`` (every user
    warm). Fold f's ``warm`` = every user outside fold f (their sequences as in ``splits``),
    its ``cold_users`` = fold f's users' full sequences. ``max_cold`` caps the users per fold
    (a random subset; the others stay warm everywhere)."""
    if splits.cold_users:
        raise ConfigError("user_folds needs splits with no cold users (SplitConfig(cold_user_frac=0.0))")
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    eligible = [s.user for s in splits.warm if len(splits.full_sequences[s.user]) >= min_len]
    perm = np.random.default_rng(seed).permutation(eligible)
    out = []
    for f, part in enumerate(np.array_split(perm, n_folds)):
        cold = set(part.tolist()[:max_cold] if max_cold else part.tolist())
        out.append(dataclasses.replace(
            splits, warm=[s for s in splits.warm if s.user not in cold],
            cold_users=[splits.full_sequences[u] for u in sorted(cold)]))
    return out


# -- cold-start items ------------------------------------------------------------------------------
def cold_item_events(splits: Splits, timestamps: Optional[dict] = None, n_adapt: int = 3,
                     seed: int = 0) -> tuple[list[UserSequence], list[Example]]:
    """(adaptation sequences, evaluation examples) of the cold-item protocol (module docstring).

    ``timestamps``: optional {(user, position): unix time}; without it events are ordered by
    (position in the user's sequence, random user order from ``seed``)."""
    cold = set(int(i) for i in splits.cold_items)
    cold_users = {s.user for s in splits.cold_users}
    rng = np.random.default_rng(seed)
    user_rank = {u: float(r) for u, r in zip(splits.full_sequences, rng.random(len(splits.full_sequences)))}
    events: dict[int, list[tuple[Any, str, int]]] = {}
    for u, s in splits.full_sequences.items():
        if u in cold_users:
            continue
        for pos, it in enumerate(s.items):
            if it in cold and pos >= 1:
                key = timestamps[(u, pos)] if timestamps is not None else (pos, user_rank[u])
                events.setdefault(it, []).append((key, u, pos))
    adapt_seqs, eval_examples = [], []
    for it in sorted(events):
        evs = sorted(events[it])
        for j, (_, u, pos) in enumerate(evs):
            s = splits.full_sequences[u]
            if j < n_adapt:
                adapt_seqs.append(UserSequence(u, s.items[: pos + 1], s.ratings[: pos + 1]))
            else:
                eval_examples.append(Example(u, s.items[:pos], it, s.ratings[pos], s.ratings[:pos]))
    return adapt_seqs, eval_examples


def interaction_times(data) -> dict:
    """{(user, position in the time-sorted sequence): timestamp} from an Interactions log."""
    out = {}
    for u, ev in data.sequences().items():
        for pos, (_, _, t) in enumerate(ev):
            out[(u, pos)] = t
    return out


def coldstart_items(model, splits: Splits, n_adapt: int = 3, config=None, timestamps=None,
                    max_eval: Optional[int] = None, seed: int = 0) -> dict:
    """Cold-item metrics before and after ``adapt_cold_items`` (see the module docstring)."""
    from ..adaptation.items import adapt_cold_items

    adapt_seqs, examples = cold_item_events(splits, timestamps, n_adapt, seed)
    if max_eval is not None and len(examples) > max_eval:
        idx = np.random.default_rng(seed).choice(len(examples), size=max_eval, replace=False)
        examples = [examples[i] for i in sorted(idx)]
    before = _metrics(model, examples)
    pop = _metrics(popularity_for(splits), examples)
    res = adapt_cold_items(model, adapt_seqs, splits.cold_items, config)
    after = _metrics(res.model, examples)
    warm_before = _metrics(model, splits.loo_test())
    warm_after = _metrics(res.model, splits.loo_test())
    return {"before": before, "after": after, "popularity": pop, "n_adapt_sequences": len(adapt_seqs),
            "n_items_adapted": len({s.items[-1] for s in adapt_seqs}), "n_eval": len(examples),
            "seconds": res.info.get("seconds", 0.0), "size_kb": res.artifact.size_kb(),
            "warm_before": warm_before, "warm_after": warm_after, "info": res.info}


# -- continual re-fine-tuning --------------------------------------------------------------------
def forgetting(model, splits: Splits, strategy: str = "lora", config=None, replay_ratio: float = 1.0,
               max_warm: Optional[int] = None, seed: int = 0) -> dict:
    """Warm users' LOO test NDCG@10 before/after adapting on the new slice (module docstring)."""
    from ..adaptation.continual import continual_adapt

    new = [UserSequence(s.user, s.items[:-1], s.ratings[:-1]) for s in splits.cold_users if len(s) >= 3]
    new_eval = [Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1])
                for s in splits.cold_users if len(s) >= 3]
    warm_test = splits.loo_test()
    if max_warm is not None and len(warm_test) > max_warm:
        idx = np.random.default_rng(seed).choice(len(warm_test), size=max_warm, replace=False)
        warm_test = [warm_test[i] for i in sorted(idx)]
    before = _metrics(model, warm_test)
    new_before = _metrics(model, new_eval)
    res = continual_adapt(model, new, strategy=strategy, config=config, replay=splits.loo_train(),
                          replay_ratio=replay_ratio)
    after = _metrics(res.model, warm_test)
    new_after = _metrics(res.model, new_eval)
    ratio = after["ndcg@10"] / before["ndcg@10"] if before["ndcg@10"] > 0 else float("nan")
    return {"strategy": strategy, "replay_ratio": replay_ratio, "warm_before": before,
            "warm_after": after, "forgetting_ratio": ratio, "new_before": new_before,
            "new_after": new_after, "seconds": res.info.get("seconds", 0.0),
            "size_kb": res.artifact.size_kb(), "info": res.info}
