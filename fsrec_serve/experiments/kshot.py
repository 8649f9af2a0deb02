"""The k-shot benchmark of issue 18.3: non-adaptive baselines, adapters whose every
hyperparameter is chosen on inner users, and a two-level bootstrap.

Per fold (``kshot_folds``) and k: a cold user's support is their first k interactions and the
query the (k+1)-th, full ranking, support items excluded, pessimistic ties. The same split of the
fold's inner users (warm users whose first ``K_MAX + 1`` items the fold bases never trained on)
is the inner validation.

Baselines (no adaptation)
    ``first-k-popularity``: how often each item occurs among the first k+1 items of the warm
    users' sequences (ties broken by overall popularity); ``popularity``; ``zero-shot`` (the
    fold's base, support as history) and ``zero-shot-prefix`` (the base trained with prefix
    windows). For the inner users both popularity counts leave the inner users' prefixes out.

Adapters (on the base with the better inner NDCG@10 at this k)
    ``head-only+warm``: an output-bias adapter trained on the warm users' first k+1 items and the
    cold supports, early-stopped on the inner users; lr from ``KshotSettings.head_only_lrs``.
    ``per-user``: per-user offsets (``fit_user_params``) on the base; ``cohort+per-user``: the
    offsets on top of ``head-only+warm``; (lr, steps) from the settings' grid. ``inner-best``:
    whichever of the base and the three adapters has the best inner NDCG@10.

Every choice (base, lr, (lr, steps), inner-best, the baseline named ``baseline_inner``) reads
only inner users' queries (``select_best``); a cold user's query is only scored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.splits import Example, UserSequence
from ..evaluation.metrics import ndcg_at_k, rank_of_targets
from .coldstart import query_ranks
from .kshot_folds import KshotFold

BASELINES = ("first-k-popularity", "popularity", "zero-shot", "zero-shot-prefix")
ADAPTERS = ("head-only+warm", "per-user", "cohort+per-user", "inner-best")
PRIMARY = "cohort+per-user"  # the method registered in bench/goals.py (issue 18.3)


@dataclass
class KshotSettings:
    head_only_lrs: tuple = (0.1, 0.03)  # head-only+warm lr candidates (chosen on inner users)
    peruser_lrs: tuple = (0.03, 0.1)  # per-user offset lr candidates (chosen on inner users)
    peruser_steps: tuple = (10, 30)  # per-user step counts (chosen on inner users)
    adapt_epochs: int = 20  # most passes of the cohort adapter (early stopping on inner users)
    adapt_patience: int = 4  # passes without a better inner NDCG@10 before it stops
    max_warm: Optional[int] = None  # warm users' prefixes in the cohort's training data; None = all
    seed: int = 0  # seeds the adapters
    num_threads: int = 1  # torch threads of the adapters


def kshot_pairs(sequences: Sequence[UserSequence], k: int) -> tuple[list[UserSequence], list[Example]]:
    """(supports = first k items, queries = the (k+1)-th given the first k) of every sequence
    longer than k."""
    sup, qry = [], []
    for s in sequences:
        if len(s) > k:
            sup.append(UserSequence(s.user, s.items[:k], s.ratings[:k]))
            qry.append(Example(s.user, s.items[:k], s.items[k], s.ratings[k], s.ratings[:k]))
    return sup, qry


def item_counts(sequences: Sequence, num_items: int, first: Optional[int] = None) -> np.ndarray:
    """[num_items + 1] occurrences of each item in ``sequences`` (only their first ``first``
    items when given); column 0 (padding) stays 0."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    for s in sequences:
        items = np.asarray(getattr(s, "items", s)[:first] if first else getattr(s, "items", s), dtype=np.int64)
        items = items[(items > 0) & (items <= num_items)]
        np.add.at(counts, items, 1.0)
    return counts


def first_k_popularity(sequences: Sequence, k: int, num_items: int) -> np.ndarray:
    """Scores of the first-k-popularity baseline: occurrences among the first k+1 items of each
    sequence, ties broken by overall popularity (a fraction < 1 added)."""
    early, total = item_counts(sequences, num_items, first=k + 1), item_counts(sequences, num_items)
    return early + total / (total.max() + 1.0)


def static_ranks(scores: np.ndarray, query: Sequence[Example]) -> np.ndarray:
    """0-based ranks of the query targets under one score vector (history and padding excluded,
    pessimistic ties), float64."""
    if not query:
        return np.zeros(0, dtype=np.int64)
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64)).unsqueeze(0).expand(len(query), -1)
    exclude = torch.zeros(s.shape, dtype=torch.bool)
    exclude[:, 0] = True
    for j, e in enumerate(query):
        exclude[j, torch.as_tensor(e.history, dtype=torch.long)] = True
    targets = torch.tensor([e.target for e in query], dtype=torch.long)
    return rank_of_targets(s, targets, exclude).numpy()


def select_best(candidates: Sequence, inner_score: Callable) -> tuple:
    """(best candidate, its score, every score) by ``inner_score(candidate)`` on inner users:
    the one place a k-shot choice is made; first candidate wins ties."""
    scores = [float(inner_score(c)) for c in candidates]
    i = int(np.argmax(scores))
    return candidates[i], scores[i], scores


@dataclass
class KshotData:
    k: int
    inner_support: list  # inner users' first k items
    inner_query: list  # inner users' (k+1)-th item given the first k
    cold_support: list  # cold users' first k items
    cold_query: list  # cold users' (k+1)-th item (only ever scored)
    warm_prefixes: list  # non-inner warm users' first k+1 items (the cohort's extra training data)


def kshot_data(fold: KshotFold, k: int, max_warm: Optional[int] = None, seed: int = 0) -> KshotData:
    inner = {s.user for s in fold.inner}
    isup, iqry = kshot_pairs(fold.inner, k)
    csup, cqry = fold.splits.support_query(k)
    warm = [s for s in fold.splits.warm if s.user not in inner and len(s) > k]
    if max_warm is not None and len(warm) > max_warm:
        idx = np.sort(np.random.default_rng(seed).permutation(len(warm))[:max_warm])
        warm = [warm[i] for i in idx]
    prefixes = [UserSequence(s.user, s.items[: k + 1], s.ratings[: k + 1]) for s in warm]
    return KshotData(k, isup, iqry, csup, cqry, prefixes)


def baseline_runs(fold: KshotFold, d: KshotData, bases: dict) -> dict:
    """{baseline: {"ranks", "inner_ranks"}}: popularity counts for the inner users leave the inner
    users' prefixes out (the bases never trained on them either)."""
    n = len(fold.splits.item_map)
    inner = {s.user for s in fold.inner}
    outside = [s for s in fold.splits.warm if s.user not in inner]
    out = {
        "first-k-popularity": (first_k_popularity(fold.splits.warm, d.k, n), first_k_popularity(outside, d.k, n)),
        "popularity": (item_counts(fold.splits.warm, n), item_counts(fold.pretrain_sequences(), n)),
    }
    runs = {name: {"ranks": static_ranks(c, d.cold_query), "inner_ranks": static_ranks(i, d.inner_query)}
            for name, (c, i) in out.items()}
    for name, model in (("zero-shot", bases["base"]), ("zero-shot-prefix", bases["prefix"])):
        runs[name] = {"ranks": query_ranks(model, d.cold_query), "inner_ranks": query_ranks(model, d.inner_query)}
    return runs


def head_only_warm(model, d: KshotData, s: KshotSettings) -> dict:
    """The head-only+warm cohort adapter, lr chosen on the inner users (early stopping too)."""
    from ..adaptation import AdaptConfig, adapt

    train = list(d.cold_support) + list(d.warm_prefixes)
    fits = {}

    def fit(lr):
        cfg = AdaptConfig(lr=lr, seed=s.seed, num_threads=s.num_threads, refit=False,
                          epochs=s.adapt_epochs, patience=s.adapt_patience)
        fits[lr] = adapt(model, train, strategy="head_only", config=cfg, valid=d.inner_query)
        return fits[lr].info.get("inner", {}).get("ndcg@10", float("-inf"))

    lr, _, scores = select_best(list(s.head_only_lrs), fit)
    adapted = fits[lr].merged_model()
    return {"model": adapted, "ranks": query_ranks(adapted, d.cold_query),
            "inner_ranks": query_ranks(adapted, d.inner_query),
            "info": {"lr": lr, "inner_ndcg_per_lr": dict(zip(map(str, s.head_only_lrs), scores)),
                     "epochs": fits[lr].info.get("inner", {}).get("best_epoch")}}


def per_user(model, d: KshotData, s: KshotSettings) -> dict:
    """Per-user offsets on ``model``, (lr, steps) chosen on the inner users' queries; at k below
    the offsets' least support nobody is adapted (the model's own ranks)."""
    from ..adaptation import PerUserConfig, fit_user_params

    pc0 = PerUserConfig()
    if d.k < pc0.min_support:
        return {"ranks": query_ranks(model, d.cold_query), "inner_ranks": query_ranks(model, d.inner_query),
                "info": {"adapted": 0, "why": f"k < min_support ({pc0.min_support})"}}
    grid = [(lr, st) for lr in s.peruser_lrs for st in s.peruser_steps]
    inner_users = [e.user for e in d.inner_query]
    inner = {}

    def fit(c):
        res = fit_user_params(model, d.inner_support, PerUserConfig(lrs=(c[0],), steps=(c[1],)))
        inner[c] = query_ranks(model, d.inner_query, res.params_for(inner_users))
        return ndcg_at_k(inner[c], 10).mean()

    best, _, scores = select_best(grid, fit)
    t0 = time.process_time()
    res = fit_user_params(model, d.cold_support, PerUserConfig(lrs=(best[0],), steps=(best[1],)))
    cpu = time.process_time() - t0
    ranks = query_ranks(model, d.cold_query, res.params_for([e.user for e in d.cold_query]))
    return {"ranks": ranks, "inner_ranks": inner[best],
            "info": {"lr": best[0], "steps": best[1], "adapted": int(res.adapted.sum()),
                     "inner_ndcg_per_config": {f"{a}/{b}": v for (a, b), v in zip(grid, scores)},
                     "cpu_ms_per_user": 1000.0 * cpu / max(1, len(d.cold_support))}}


def kshot_run(fold: KshotFold, k: int, bases: dict, settings: Optional[KshotSettings] = None,
              log=print) -> dict:
    """Every method of the benchmark on one fold and k: {"methods": {name: {"ranks",
    "inner_ranks", "seconds", "info"}}, "users", "inner_users", "base"} (ranks as lists)."""
    s = settings or KshotSettings()
    d = kshot_data(fold, k, s.max_warm, s.seed)
    methods: dict = {}

    def record(name, run, seconds=0.0):
        methods[name] = {"ranks": [int(r) for r in run["ranks"]], "inner_ranks": [int(r) for r in run["inner_ranks"]],
                         "seconds": float(seconds), "info": run.get("info", {})}
        log(f"    {fold.name} k={k} {name}: ndcg@10 {ndcg_at_k(run['ranks'], 10).mean():.4f} "
            f"(inner {ndcg_at_k(run['inner_ranks'], 10).mean():.4f}, {seconds:.0f}s)")

    for name, run in baseline_runs(fold, d, bases).items():
        record(name, run)
    base_name, _, _ = select_best(["base", "prefix"], lambda b: ndcg_at_k(
        methods["zero-shot" if b == "base" else "zero-shot-prefix"]["inner_ranks"], 10).mean())
    model = bases[base_name]
    t0 = time.perf_counter()
    cohort = head_only_warm(model, d, s)
    record("head-only+warm", cohort, time.perf_counter() - t0)
    t0 = time.perf_counter()
    record("per-user", per_user(model, d, s), time.perf_counter() - t0)
    t0 = time.perf_counter()
    record("cohort+per-user", per_user(cohort["model"], d, s), time.perf_counter() - t0)
    zs = "zero-shot" if base_name == "base" else "zero-shot-prefix"
    pick, _, _ = select_best([zs, "head-only+warm", "per-user", "cohort+per-user"],
                             lambda m: ndcg_at_k(methods[m]["inner_ranks"], 10).mean())
    record("inner-best", dict(methods[pick], info={"picked": pick}))
    return {"fold": fold.name, "k": k, "base": base_name, "users": [e.user for e in d.cold_query],
            "inner_users": [e.user for e in d.inner_query], "settings": asdict(s), "methods": methods}


# -- two-level bootstrap ---------------------------------------------------------------------------
def two_level_means(groups: Sequence[Sequence[np.ndarray]], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, A] pooled means of A aligned per-user arrays under a two-level bootstrap: the
    groups (fold bases) are resampled with replacement, then the users within each drawn group
    (pairs kept together). ``groups[g][a]`` = array a of group g."""
    rng = np.random.default_rng(seed)
    arrays = [np.stack([np.asarray(a, dtype=np.float64) for a in g]) for g in groups]  # [A, n_g]
    out = np.empty((n_boot, arrays[0].shape[0]))
    for b in range(n_boot):
        tot, cnt = 0.0, 0
        for g in rng.integers(0, len(arrays), size=len(arrays)):
            n = arrays[g].shape[1]
            tot = tot + arrays[g][:, rng.integers(0, n, size=n)].sum(1)
            cnt += n
        out[b] = tot / cnt
    return out


def two_level_gain(baseline: Sequence[np.ndarray], adapted: Sequence[np.ndarray], n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """``mean(adapted) / mean(baseline) - 1`` pooled over the groups' users, with a 95 % two-level
    bootstrap CI (``two_level_means``) and the share of undefined resamples (baseline mean 0)."""
    b, a = np.concatenate(baseline).astype(np.float64), np.concatenate(adapted).astype(np.float64)
    boots = two_level_means([(x, y) for x, y in zip(baseline, adapted)], n_boot, seed)
    ok = boots[:, 0] > 0
    g = boots[ok, 1] / boots[ok, 0] - 1.0
    lo, hi = np.percentile(g, [2.5, 97.5]) if g.size else (float("nan"), float("nan"))
    return {"mean": float(a.mean() / b.mean() - 1.0) if b.mean() > 0 else float("nan"),
            "ci_low": float(lo), "ci_high": float(hi), "n_users": int(b.size), "n_groups": len(baseline),
            "boot_undefined": float(1.0 - ok.mean())}


def two_level_mean(values: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0) -> dict:
    """Pooled mean of per-user values with its two-level 95 % CI, std over users and over the
    groups' means."""
    v = np.concatenate(values).astype(np.float64)
    boots = two_level_means([(x,) for x in values], n_boot, seed)[:, 0]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    gm = [float(np.mean(x)) for x in values]
    return {"mean": float(v.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_users": int(v.size),
            "std_users": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "std": float(np.std(gm, ddof=1)) if len(gm) > 1 else 0.0, "n": len(gm)}
