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
import torch

from ..adaptation.strategies import fsrec_of
from ..data.splits import Example, Splits, UserSequence
from ..errors import ConfigError
from ..evaluation.baselines import PopularityModel
from ..evaluation.metrics import ndcg_at_k
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


# -- the k-shot benchmark with power: per-user ranks, per-user offsets, paired gains -----------------
@torch.no_grad()
def query_ranks(model, query: Sequence[Example], user_params=None, batch_size: int = 256) -> np.ndarray:
    """0-based rank of each query's target (full ranking, padding and history excluded, pessimistic
    ties), optionally with per-user offsets ``user_params`` [E, H] (rows aligned with ``query``)."""
    from ..evaluation.metrics import rank_of_targets
    from ..model import pad_histories

    base = fsrec_of(model)
    out = []
    for i in range(0, len(query), batch_size):
        chunk = query[i:i + batch_size]
        x = pad_histories([e.history for e in chunk], base.config.max_seq_len)
        up = None if user_params is None else user_params[i:i + batch_size]
        scores = (base.next_item_scores(x, user_params=up) if up is not None
                  else model.next_item_scores(x)).float()
        exclude = torch.zeros_like(scores, dtype=torch.bool)  # [B, N]
        exclude[:, 0] = True
        for j, e in enumerate(chunk):
            exclude[j, torch.as_tensor(e.history, dtype=torch.long)] = True
        targets = torch.tensor([e.target for e in chunk], dtype=torch.long)
        out.append(rank_of_targets(scores, targets, exclude))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def paired_relative_gain(baseline, adapted, n_boot: int = 2000, seed: int = 0) -> dict:
    """``mean(adapted) / mean(baseline) - 1`` over the same users, with a 95 % bootstrap CI that
    resamples users (pairs kept together)."""
    b, a = np.asarray(baseline, dtype=np.float64), np.asarray(adapted, dtype=np.float64)
    if b.shape != a.shape or b.size == 0:
        raise ConfigError(f"paired gain needs two equal-length non-empty arrays, got {b.shape} and {a.shape}")
    idx = np.random.default_rng(seed).integers(0, b.size, size=(n_boot, b.size))
    bm, am = b[idx].mean(1), a[idx].mean(1)
    boots = am[bm > 0] / bm[bm > 0] - 1.0
    gain = float(a.mean() / b.mean() - 1.0) if b.mean() > 0 else float("nan")
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots.size else (float("nan"), float("nan")))
    return {"mean": gain, "ci_low": float(lo), "ci_high": float(hi), "n_users": int(b.size)}


WARM_SUFFIX = "+warm"


def short_prefix_data(splits: Splits, support: Sequence[UserSequence], k: int, seed: int = 0,
                      valid_frac: float = 0.2, max_valid: int = 500, max_warm: Optional[int] = None):
    """Training sequences and validation examples of a ``<strategy>+warm`` cohort adapter: the
    cold users' supports plus the pretraining (warm) users' first k+1 interactions, early-stopped
    on held-out warm users' (k+1)-th interaction given their first k (validation users: never a
    cold user's query). The base model sees a warm user's first items only in some windows;
    cold-start histories are exactly such short prefixes."""
    warm = [s for s in splits.warm if len(s) >= k + 1]
    perm = np.random.default_rng(seed).permutation(len(warm))
    if max_warm is not None:  # a random subset of the pretraining users (budget)
        warm = [warm[i] for i in sorted(perm[:max_warm].tolist())]
        perm = np.random.default_rng(seed).permutation(len(warm))
    n_valid = min(max_valid, max(1, int(round(valid_frac * len(warm)))))
    held = set(perm[:n_valid].tolist())
    train = list(support) + [UserSequence(s.user, s.items[: k + 1], s.ratings[: k + 1])
                             for i, s in enumerate(warm) if i not in held]
    valid = [Example(s.user, s.items[:k], s.items[k], s.ratings[k], s.ratings[:k])
             for i, s in enumerate(warm) if i in held]
    return train, valid


def kshot_fold(model, splits: Splits, k: int, cohort: Sequence[str], config=None, peruser=None,
               log=print, max_warm: Optional[int] = None) -> dict:
    """Every method of the k-shot benchmark on one fold: {method: {"users", "ranks", "seconds",
    "info"}}. Methods: popularity, zero-shot, each cohort strategy (``lora``, or ``lora+warm``:
    see ``short_prefix_data``), per-user, cohort+per-user (on the cohort strategy with the best
    inner / validation NDCG@10, if it beats zero-shot there) and auto (adapt(strategy="auto") on
    the supports + per-user). Selection uses the supports (inner folds) or warm validation users
    only; the query is only scored."""
    from ..adaptation import AdaptConfig, PerUserConfig, adapt, fit_user_params

    cfg, pcfg = config or AdaptConfig(), peruser or PerUserConfig()
    support, query = splits.support_query(k)
    users = [e.user for e in query]
    out: dict = {}

    def record(name, ranks, seconds=0.0, **info):
        out[name] = {"ranks": [int(r) for r in ranks], "seconds": float(seconds), "info": info}
        log(f"    k={k} {name}: ndcg@10 {ndcg_at_k(ranks, 10).mean():.4f} ({seconds:.1f}s)")

    def with_offsets(name, scorer, **info):
        t0 = time.perf_counter()
        res = fit_user_params(scorer, support, pcfg)
        sec = time.perf_counter() - t0
        record(name, query_ranks(scorer, query, res.params_for(users)), sec,
               ms_per_user=1000.0 * sec / max(1, len(support)),
               cpu_ms_per_user=1000.0 * res.info.get("cpu_seconds", 0.0) / max(1, len(support)),
               n_adapted=int(res.adapted.sum()),
               n_failed=len(res.failed), lr=res.info.get("lr"), steps=res.info.get("steps"),
               inner_ndcg=res.info.get("inner_ndcg"), inner_zero_shot_ndcg=res.info.get("inner_zero_shot_ndcg"),
               **info)

    record("popularity", evaluate_next_item(popularity_for(splits), query, ks=KS, return_ranks=True)["ranks"])
    record("zero-shot", query_ranks(model, query))
    best, best_score, best_model = None, float("-inf"), None
    for strategy in cohort:
        t0 = time.perf_counter()
        name = strategy.replace("_", "-")
        if strategy.endswith(WARM_SUFFIX):  # cohort + warm users' short prefixes
            train, valid = short_prefix_data(splits, support, k, seed=cfg.seed, max_warm=max_warm)
            res = adapt(model, train, strategy=strategy[: -len(WARM_SUFFIX)], config=cfg, valid=valid)
        else:
            res = adapt(model, support, strategy=strategy, config=cfg)
        sec = time.perf_counter() - t0
        inner = res.info.get("inner", {})
        record(name, query_ranks(res.model, query), sec, inner_ndcg=inner.get("ndcg@10"),
               inner_zero_shot_ndcg=inner.get("zero_shot_ndcg@10"), degraded=res.info.get("degraded"))
        # strategies are compared by their gain over zero-shot on their own selection examples
        nd, zs = inner.get("ndcg@10"), inner.get("zero_shot_ndcg@10")
        score = nd / zs - 1.0 if nd is not None and zs else float("-inf")
        if score > max(best_score, 0.0):
            best, best_score, best_model = name, score, res.merged_model()
    with_offsets("per-user", model)
    if best_model is not None:
        with_offsets("cohort+per-user", best_model, cohort=best)
    else:
        out["cohort+per-user"] = dict(out["per-user"], info=dict(out["per-user"]["info"], cohort="zero_shot"))
    t0 = time.perf_counter()
    if any(c.endswith(WARM_SUFFIX) for c in cohort):  # auto sees the same data as the cohorts
        train, valid = short_prefix_data(splits, support, k, seed=cfg.seed, max_warm=max_warm)
        res = adapt(model, train, strategy="auto", config=cfg, valid=valid)
    else:
        res = adapt(model, support, strategy="auto", config=cfg)
    chosen = res.info.get("chosen", {}).get("strategy", res.strategy)
    auto_model = res.merged_model() if res.strategy != "zero_shot" else model
    with_offsets("auto", auto_model, cohort=chosen, cohort_seconds=time.perf_counter() - t0)
    return {"k": k, "users": users, "methods": out, "best_cohort": best}


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
