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
                     rating_scorer: Optional[TaskScorer] = None) -> dict[str, float]:
    """Mean metrics over ``tasks``; RMSE of ``rating_scorer`` (default: ``scorer`` when it has
    ``.predicts_ratings``) over all query interactions."""
    preds = scorer(tasks)
    per = [metarec_metrics(p, t.query_ratings, k) for p, t in zip(preds, tasks)]
    out = {m: float(np.mean([x[m] for x in per])) for m in per[0]}
    rs = rating_scorer if rating_scorer is not None else (
        scorer if getattr(scorer, "predicts_ratings", False) else None)
    if rs is not None:
        rp = preds if rs is scorer else rs(tasks)
        err = np.concatenate([np.asarray(p, dtype=np.float64) - np.asarray(t.query_ratings)
                              for p, t in zip(rp, tasks)])
        out["rmse"] = float(math.sqrt(np.mean(err ** 2)))
    out["n"] = len(tasks)
    return out


# -- baselines and scorers -----------------------------------------------------------------------
class ItemMeanScorer:
    """Mean rating of the item over the training users (global mean for unseen items)."""

    predicts_ratings = True

    def __init__(self, train_sequences: Sequence[UserSequence], num_items: int, shrinkage: float = 0.0):
        s = np.zeros(num_items + 1)
        c = np.zeros(num_items + 1)
        for seq in train_sequences:
            np.add.at(s, np.asarray(seq.items), np.asarray(seq.ratings, dtype=np.float64))
            np.add.at(c, np.asarray(seq.items), 1.0)
        self.global_mean = float(s.sum() / max(1.0, c.sum()))
        # shrinkage > 0: Bayesian average towards the global mean with that many pseudo-ratings
        self.means = (s + shrinkage * self.global_mean) / np.maximum(c + shrinkage, 1e-9)
        self.means[c + shrinkage == 0] = self.global_mean
        self.counts = c

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        return [self.means[np.asarray(t.query_items)] for t in tasks]


class ItemKNNScorer:
    """Item-based collaborative filtering from the user's SUPPORT ratings (a classic baseline).

    Similarities come from the training users only: s_ij = sum_u x_ui x_uj / sqrt(sum_u x_ui^2 *
    sum_u x_uj^2) on item-mean-centred ratings x, shrunk by n_ij / (n_ij + shrinkage) (n_ij =
    users who rated both). Prediction: r_i = mean_i + sum_j s_ij (r_j - mean_j) / sum_j |s_ij|
    over the user's support items j."""

    predicts_ratings = True

    def __init__(self, train_sequences: Sequence[UserSequence], num_items: int, shrinkage: float = 10.0):
        self.item_mean = ItemMeanScorer(train_sequences, num_items)
        mu = self.item_mean.means  # [I + 1]
        U = len(train_sequences)
        X = np.zeros((U, num_items + 1), dtype=np.float32)  # centred ratings, 0 = not rated
        M = np.zeros((U, num_items + 1), dtype=np.float32)  # 1 = rated
        for u, seq in enumerate(train_sequences):
            it = np.asarray(seq.items)
            X[u, it] = np.asarray(seq.ratings, dtype=np.float32) - mu[it]
            M[u, it] = 1.0
        num = X.T @ X  # [I + 1, I + 1]
        sq = (X ** 2).sum(0)
        denom = np.sqrt(np.outer(sq, sq)) + 1e-9
        co = M.T @ M
        self.sim = (num / denom) * (co / (co + shrinkage))
        np.fill_diagonal(self.sim, 0.0)

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        mu = self.item_mean.means
        out = []
        for t in tasks:
            sup = np.asarray(t.support_items)
            dev = np.asarray(t.support_ratings, dtype=np.float64) - mu[sup]  # [S]
            S = self.sim[np.asarray(t.query_items)][:, sup]  # [Q, S]
            w = np.abs(S).sum(1) + 1e-9
            out.append(mu[np.asarray(t.query_items)] + (S @ dev) / w)
        return out


def _model_outputs(model, tasks: Sequence[MetaRecTask], batch_size: int, fn) -> list:
    """Run ``fn(base, histories [B, L], tasks chunk) -> list`` over ``tasks`` in eval mode, the
    support (time order) as each history; the model's training flag is restored."""
    from ..evaluation.protocols import scorer_device
    from ..model import pad_histories

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dev = scorer_device(model)
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(tasks), batch_size):
            chunk = tasks[i:i + batch_size]
            h = pad_histories([t.support_items for t in chunk], base.config.max_seq_len).to(dev)
            out += fn(model, h, chunk, dev)
    if was:
        model.train()
    return out


class ModelRatingScorer:
    """FsRecModel.predict_ratings with the support (time order) as the history."""

    predicts_ratings = True

    def __init__(self, model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        def rate(m, h, chunk, dev):
            q = torch.tensor([t.query_items for t in chunk], dtype=torch.long, device=dev)
            return list(m.predict_ratings(h, q).float().cpu().numpy())

        return _model_outputs(self.model, tasks, self.batch_size, rate)


class ModelNextItemScorer:
    """FsRecModel next-item logits of the query items (support as history): "would watch"."""

    def __init__(self, model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        def logits(m, h, chunk, dev):
            s = m.next_item_scores(h).float().cpu()
            return [s[j, t.query_items].numpy() for j, t in enumerate(chunk)]

        return _model_outputs(self.model, tasks, self.batch_size, logits)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else x - x.mean()


class BlendScorer:
    """Weighted sum of per-user standardised component scores (weights tuned on validation users)."""

    def __init__(self, components: dict, weights: dict):
        self.components = components  # name -> TaskScorer
        self.weights = weights  # name -> weight

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        parts = {n: c(tasks) for n, c in self.components.items() if self.weights.get(n, 0.0) != 0.0}
        out = []
        for j in range(len(tasks)):
            s = np.zeros(len(tasks[j].query_items))
            for n, p in parts.items():
                s = s + self.weights[n] * _zscore(np.asarray(p[j], dtype=np.float64))
            out.append(s)
        return out


def tune_blend(components: dict, valid_tasks: Sequence[MetaRecTask], grid: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
               anchor: Optional[str] = None, metric: str = "ndcg@5") -> tuple[dict, float, list]:
    """Grid-search blend weights on the VALIDATION users; returns (weights, score, trials).

    ``anchor``: a component whose weight is fixed to 1 (the others are relative to it)."""
    import itertools

    names = list(components)
    cache = {n: components[n](valid_tasks) for n in names}
    fixed = {n: (lambda ts, _n=n: cache[_n]) for n in names}  # score the validation tasks once
    trials = []
    best_w, best_s = None, -1.0
    free = [n for n in names if n != anchor]
    for ws in itertools.product(grid, repeat=len(free)):
        w = dict(zip(free, ws))
        if anchor is not None:
            w[anchor] = 1.0
        if not any(v != 0 for v in w.values()):
            continue
        s = evaluate_metarec(BlendScorer(fixed, w), valid_tasks)[metric]
        trials.append((dict(w), s))
        if s > best_s + 1e-12:
            best_w, best_s = dict(w), s
    return best_w, best_s, trials


# -- per-user adaptation of a rating head -----------------------------------------------------------
def als_item_factors(train_sequences: Sequence[UserSequence], num_items: int, item_means: np.ndarray,
                     k: int = 16, reg: float = 5.0, iters: int = 8, seed: int = 0) -> np.ndarray:
    """[I + 1, k] item factors of a matrix factorisation of the training users' ratings minus
    the item means (alternating ridge regressions, ``reg`` on both sides)."""
    rng = np.random.default_rng(seed)
    V = rng.normal(0.0, 0.1, (num_items + 1, k))
    P = np.zeros((len(train_sequences), k))
    rows = [(np.asarray(s.items), np.asarray(s.ratings, dtype=np.float64) - item_means[np.asarray(s.items)])
            for s in train_sequences]
    users_of: dict[int, list] = {}
    for u, (it, r) in enumerate(rows):
        for i, x in zip(it.tolist(), r.tolist()):
            users_of.setdefault(i, []).append((u, x))
    cols = {i: (np.asarray([a for a, _ in v]), np.asarray([b for _, b in v])) for i, v in users_of.items()}
    eye = reg * np.eye(k)
    for _ in range(iters):
        for u, (it, r) in enumerate(rows):
            P[u] = np.linalg.solve(V[it].T @ V[it] + eye, V[it].T @ r)
        for i, (us, x) in cols.items():
            V[i] = np.linalg.solve(P[us].T @ P[us] + eye, P[us].T @ x)
    return V


class SupportFeatures:
    """Per (user, item) features from the training users and the user's SUPPORT ratings:
    [shrunk item mean - global mean, item-kNN deviation, MF deviation (user vector fitted on
    the support), genre affinity (support deviations per genre), standardised log count].
    ``support_features`` computes them leave-one-out (an item's own rating never feeds its
    features), so a per-user head can be fitted on the support without seeing its targets."""

    names = ("item_mean", "item_knn", "mf", "genre", "log_count")

    def __init__(self, train_sequences: Sequence[UserSequence], num_items: int, item_features=None,
                 shrinkage: float = 5.0, mf_reg: float = 5.0, seed: int = 0):
        self.item_mean = ItemMeanScorer(train_sequences, num_items, shrinkage=shrinkage)
        self.mu = self.item_mean.means
        self.sim = ItemKNNScorer(train_sequences, num_items).sim
        self.V = als_item_factors(train_sequences, num_items, self.mu, seed=seed)
        self.mf_reg = mf_reg
        F = np.zeros((num_items + 1, 1)) if item_features is None else np.asarray(item_features, dtype=np.float64)
        self.F = F
        lc = np.log1p(self.item_mean.counts)
        self.log_count = (lc - lc.mean()) / (lc.std() + 1e-12)

    def _features(self, items: np.ndarray, task: MetaRecTask, loo: bool) -> np.ndarray:
        sup = np.asarray(task.support_items)
        dev = np.asarray(task.support_ratings, dtype=np.float64) - self.mu[sup]  # [S]
        S = self.sim[items][:, sup]  # [Q, S] (zero diagonal: kNN is leave-one-out already)
        knn = (S @ dev) / (np.abs(S).sum(1) + 1e-9)
        Vs = self.V[sup]
        A, b = Vs.T @ Vs + self.mf_reg * np.eye(Vs.shape[1]), Vs.T @ dev
        gs, gc = (self.F[sup] * dev[:, None]).sum(0), self.F[sup].sum(0)  # per-genre sums, counts
        if loo:  # items == sup: remove each item's own rating
            mf = np.array([self.V[i] @ np.linalg.solve(A - np.outer(self.V[i], self.V[i]), b - self.V[i] * d)
                           for i, d in zip(items, dev)])
            genre = np.array([self.F[i] @ ((gs - self.F[i] * d) / (gc - self.F[i] + 3.0))
                              for i, d in zip(items, dev)])
        else:
            mf = self.V[items] @ np.linalg.solve(A, b)
            genre = self.F[items] @ (gs / (gc + 3.0))
        return np.stack([self.mu[items] - self.item_mean.global_mean, knn, mf, genre,
                         self.log_count[items]], axis=1)  # [Q, 5]

    def query_features(self, task: MetaRecTask) -> np.ndarray:
        return self._features(np.asarray(task.query_items), task, loo=False)

    def support_features(self, task: MetaRecTask) -> np.ndarray:
        return self._features(np.asarray(task.support_items), task, loo=True)


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


def pair_differences(features: Sequence[np.ndarray], ratings: Sequence[Sequence[float]]) -> np.ndarray:
    """[P, d] f_i - f_j over every pair of one user's items with rating_i > rating_j."""
    out = [np.zeros((0, features[0].shape[1]))] if features else []
    for F, r in zip(features, ratings):
        r = np.asarray(r)
        i, j = np.nonzero(r[:, None] > r[None, :])
        out.append(F[i] - F[j])
    return np.concatenate(out)


def fit_pairwise(D: np.ndarray, w0: np.ndarray, lam: float, reg: float = 0.0, iters: int = 8) -> np.ndarray:
    """Newton steps on mean log(1 + exp(-D w)) + reg/2 |w|^2 + lam/2 |w - w0|^2 (a pairwise
    logistic ranking loss: the higher-rated item of each pair should score higher)."""
    w = np.array(w0, dtype=np.float64)
    if len(D) == 0:
        return w
    eye = np.eye(len(w))
    for _ in range(iters):
        z = D @ w
        p = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z), overflow-free
        g = -(D * p[:, None]).mean(0) + reg * w + lam * (w - w0)
        H = (D * (p * (1 - p))[:, None]).T @ D / len(D) + (reg + lam) * eye
        w = w - np.linalg.solve(H, g)
    return w


def fit_global_head(features: SupportFeatures, tasks: Sequence[MetaRecTask], reg: float = 1e-2) -> np.ndarray:
    """[5] weights of the rating head every user starts from: pairwise logistic ranking of the
    query items of simulated training tasks (features from each task's support)."""
    D = pair_differences([features.query_features(t) for t in tasks], [t.query_ratings for t in tasks])
    return fit_pairwise(D, np.zeros(len(features.names)), lam=0.0, reg=reg, iters=30)


class PerUserHeadScorer:
    """Rating head adapted per user on their own support: a few Newton steps of the pairwise
    ranking loss over the user's support pairs (leave-one-out support features), pulled towards
    the global head with strength ``lam``; the query items are ranked by w_u . f. ``lam = inf``
    is the global head (no adaptation). Users are independent (one small solve each)."""

    predicts_ratings = False

    def __init__(self, features: SupportFeatures, w_global: np.ndarray, lam: float):
        self.features, self.w_global, self.lam = features, np.asarray(w_global), float(lam)

    def user_weights(self, task: MetaRecTask) -> np.ndarray:
        if not math.isfinite(self.lam):
            return self.w_global
        D = pair_differences([self.features.support_features(task)], [task.support_ratings])
        return fit_pairwise(D, self.w_global, self.lam)

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        return [self.features.query_features(t) @ self.user_weights(t) for t in tasks]


def select_per_user_lambda(features: SupportFeatures, w_global: np.ndarray, valid_tasks: Sequence[MetaRecTask],
                           grid: Sequence[float] = (0.1, 0.3, 1.0, math.inf)) -> tuple[float, dict]:
    """The ``lam`` of ``grid`` with the best nDCG@5 on the VALIDATION users (ties: the larger)."""
    scores = {lam: evaluate_metarec(PerUserHeadScorer(features, w_global, lam), valid_tasks)["ndcg@5"]
              for lam in grid}
    best = max(grid, key=lambda lam: (scores[lam], lam))
    return best, scores
