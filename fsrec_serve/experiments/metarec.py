"""The RecBole-MetaRec user cold-start protocol on MovieLens-100K, and its metrics.

Protocol (as RecBole-MetaRec's MeLU/MAMO/TaNP configs: ``user_inter_num_interval: [13,100]``,
``eval_args: {group_by: task, order: RO, split: {RS: [0.8,0.1,0.1]}}``,
``meta_args: {support_num: none, query_num: 10}``, ``metrics: [NDCG]``, ``topk: 5``):

1. keep the users with 13 to 100 ratings (inclusive);
2. split those USERS 8:1:1 into train / validation / test at random (seeded), with RecBole's
   rounding (``_calcu_split_ids``: int(ratio * n) for validation and test, the rest train);
3. for each validation and test user, 10 random interactions are the query and all the others
   the support (RecBole's ``np.random.choice(len, support + query, replace=False)``);
4. rank each user's 10 query items by predicted score; the POSITIVES are the 5 query items with
   the highest true ratings, taken with ``torch.topk(true_ratings, 5)`` exactly as
   ``MetaCollector.eval_collect`` does, and the predicted top 5 with ``torch.topk(pred, 5)``;
5. binary nDCG@5 (IDCG over min(5, #positives) = 5 ideal hits), Precision@5 (hits / 5) and
   MRR@5 (1 / rank of the first hit in the top 5, else 0), averaged over test users.
   We also report graded nDCG@5 (gain = the true rating; ideal = the 5 highest true ratings) and
   RMSE of the predicted ratings over all query interactions (methods that predict ratings).

Ties. ML-100K ratings are integers, so the 5th and 6th highest true ratings are often equal;
RecBole-MetaRec breaks these ties with whatever ``torch.topk`` returns for the query in its
(random) order. We call ``torch.topk`` the same way on the query in its random draw order, so the
tie-break is the same kind of arbitrary choice. Ties in *predictions* (e.g. two items with the
same mean rating) are also broken by ``torch.topk``.

Everything a method sees of a validation/test user is the support set; hyperparameters are tuned
on the validation users only, the test users are scored once.

This module holds the protocol (split, tasks, metrics, evaluation loop); the scorers, the blend
and the per-user rating head are in ``metarec_scorers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.splits import Example, SplitConfig, Splits, UserSequence, make_splits
from ..errors import ConfigError


@dataclass
class MetaRecConfig:
    seed: int = 0  # drives the user split and the query draws
    min_ratings: int = 13  # users need at least this many ratings (RecBole user_inter_num_interval)
    max_ratings: int = 100  # ... and at most this many
    query_size: int = 10  # query interactions per validation/test user (meta_args.query_num)
    ratios: tuple = (0.8, 0.1, 0.1)  # train / validation / test share of the users
    topk: int = 5  # cut-off of the metrics


@dataclass
class MetaRecTask:
    user: str  # raw user id
    support_items: list[int]  # item indices, time order (newest last)
    support_ratings: list[float]  # aligned true ratings
    query_items: list[int]  # the 10 query items, in random draw order
    query_ratings: list[float]  # their true ratings

    def history_example(self) -> Example:
        """The support as a history (used by sequential scorers)."""
        return Example(self.user, list(self.support_items), self.query_items[0],
                       self.query_ratings[0], list(self.support_ratings))


@dataclass
class MetaRecSplit:
    config: MetaRecConfig
    splits: Splits  # every kept user's full sequence (item_map, features); no cold users/items
    train_users: list[str]
    valid_users: list[str]
    test_users: list[str]
    valid_tasks: list[MetaRecTask] = field(default_factory=list)
    test_tasks: list[MetaRecTask] = field(default_factory=list)

    def train_sequences(self) -> list[UserSequence]:
        """The training users' full sequences (all their interactions, time order)."""
        return [self.splits.full_sequences[u] for u in self.train_users]

    @property
    def num_items(self) -> int:
        return len(self.splits.item_map)


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """RecBole's ``Dataset._calcu_split_ids`` as counts: int(r * n) for all but the first part,
    the first gets the rest; a part whose share is in (0, 1) user gets one from the first."""
    tot = float(sum(ratios))
    ratios = [r / tot for r in ratios]
    cnt = [int(ratios[i] * n) for i in range(len(ratios))]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def make_metarec_split(data, config: Optional[MetaRecConfig] = None) -> MetaRecSplit:
    """Build one random split of the protocol from an ML-100K ``Interactions`` log."""
    cfg = config or MetaRecConfig()
    users, counts = np.unique(data.users, return_counts=True)
    keep_users = set(users[(counts >= cfg.min_ratings) & (counts <= cfg.max_ratings)].tolist())
    if not keep_users:
        raise ConfigError(f"no user has {cfg.min_ratings}..{cfg.max_ratings} ratings")
    mask = np.array([u in keep_users for u in data.users])
    from ..data.readers import Interactions

    sub = Interactions(
        name=f"{data.name}-metarec", users=data.users[mask], items=data.items[mask],
        ratings=data.ratings[mask], timestamps=data.timestamps[mask],
        has_timestamps=data.has_timestamps, item_features=data.item_features,
        feature_names=data.feature_names, user_features=data.user_features,
    )
    splits = make_splits(sub, SplitConfig(seed=cfg.seed, cold_user_frac=0.0, cold_item_frac=0.0,
                                          min_warm_len=1))
    rng = np.random.default_rng(cfg.seed)
    order = [str(u) for u in rng.permutation(sorted(keep_users, key=lambda x: (len(x), x)))]
    n_train, n_valid, n_test = split_counts(len(order), cfg.ratios)
    train_u = order[:n_train]
    valid_u = order[n_train:n_train + n_valid]
    test_u = order[n_train + n_valid:]

    def task(u: str) -> MetaRecTask:
        s = splits.full_sequences[u]
        n = len(s.items)
        q = rng.choice(n, size=cfg.query_size, replace=False)  # query in draw order
        qs = set(int(i) for i in q)
        sup = [j for j in range(n) if j not in qs]  # time order kept
        return MetaRecTask(u, [s.items[j] for j in sup], [s.ratings[j] for j in sup],
                           [s.items[int(j)] for j in q], [s.ratings[int(j)] for j in q])

    return MetaRecSplit(cfg, splits, train_u, valid_u, test_u,
                        valid_tasks=[task(u) for u in valid_u], test_tasks=[task(u) for u in test_u])


# -- metrics ---------------------------------------------------------------------------------------
def metarec_metrics(pred: Sequence[float], true: Sequence[float], k: int = 5) -> dict[str, float]:
    """Metrics of ONE user's query, exactly as RecBole-MetaRec (module docstring).

    pred, true: [Q] predicted scores and true ratings of the query items (same order)."""
    p = torch.as_tensor(pred, dtype=torch.float32)
    t = torch.as_tensor(true, dtype=torch.float32)
    if p.shape != t.shape or p.ndim != 1 or p.numel() < k:
        raise ConfigError(f"pred and true must be 1-d with >= {k} entries, got {tuple(p.shape)}, {tuple(t.shape)}")
    _, pred_top = torch.topk(p, k)  # predicted top k
    _, true_top = torch.topk(t, k)  # positives (ties: torch.topk, as MetaCollector)
    pos = torch.zeros(p.numel(), dtype=torch.int64)
    pos[true_top] = 1
    hits = pos[pred_top].numpy().astype(np.float64)  # [k] 1 = predicted slot i is a positive
    disc = 1.0 / np.log2(np.arange(2, k + 2))  # [k]
    pos_len = int(pos.sum())
    idcg = disc[: min(pos_len, k)].sum()
    first = np.flatnonzero(hits)
    gains = t[pred_top].numpy().astype(np.float64)
    ideal = np.sort(t.numpy().astype(np.float64))[::-1][:k]
    return {
        "ndcg@5": float((hits * disc).sum() / idcg) if idcg > 0 else 0.0,
        "precision@5": float(hits.sum() / k),
        "mrr@5": float(1.0 / (first[0] + 1)) if first.size else 0.0,
        "graded_ndcg@5": float((gains * disc).sum() / (ideal * disc[: len(ideal)]).sum())
        if ideal.sum() > 0 else 0.0,
    }


# A scorer maps a list of tasks to one array of scores per task (aligned with query_items);
# ``ratings=True`` scorers' outputs are ratings (RMSE is reported for them).
TaskScorer = Callable[[Sequence[MetaRecTask]], list]


def evaluate_metarec(scorer: TaskScorer, tasks: Sequence[MetaRecTask], k: int = 5,
                     rating_scorer: Optional[TaskScorer] = None, per_task: bool = False) -> dict:
    """Mean metrics over ``tasks``; RMSE of ``rating_scorer`` (default: ``scorer`` when it has
    ``.predicts_ratings``) over all query interactions. ``per_task``: also each task's nDCG@5
    (``per_task_ndcg@5``, task order; for paired comparisons of methods)."""
    preds = scorer(tasks)
    per = [metarec_metrics(p, t.query_ratings, k) for p, t in zip(preds, tasks)]
    out = {m: float(np.mean([x[m] for x in per])) for m in per[0]}
    if per_task:
        out["per_task_ndcg@5"] = [x["ndcg@5"] for x in per]
    rs = rating_scorer if rating_scorer is not None else (
        scorer if getattr(scorer, "predicts_ratings", False) else None)
    if rs is not None:
        rp = preds if rs is scorer else rs(tasks)
        err = np.concatenate([np.asarray(p, dtype=np.float64) - np.asarray(t.query_ratings)
                              for p, t in zip(rp, tasks)])
        out["rmse"] = float(math.sqrt(np.mean(err ** 2)))
    out["n"] = len(tasks)
    return out


def simulated_tasks(sequences: Sequence[UserSequence], query_size: int = 10, seed: int = 0) -> list:
    """Training users cut like the protocol's tasks (random query, the rest = support)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in sequences:
        n = len(s.items)
        if n < query_size + 3:
            continue
        q = rng.choice(n, size=query_size, replace=False)
        qs = set(q.tolist())
        sup = [j for j in range(n) if j not in qs]
        out.append(MetaRecTask(s.user, [s.items[j] for j in sup], [s.ratings[j] for j in sup],
                               [s.items[int(j)] for j in q], [s.ratings[int(j)] for j in q]))
    return out
