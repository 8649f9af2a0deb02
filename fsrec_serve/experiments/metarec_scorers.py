"""Scorers for the MetaRec protocol (``metarec``): item-mean and item-kNN baselines, the model's
rating and next-item scorers, a validation-tuned blend, and a per-user adapted rating head
(pairwise ranking head on support features, adapted per user on the support set).

Every scorer maps a list of ``MetaRecTask`` to one score array per task (aligned with its
``query_items``) and sees only each user's support; settings are chosen on validation users.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.splits import UserSequence
from .metarec import MetaRecTask, evaluate_metarec


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


def _offsets(user_params, chunk, dev):
    """[B, H] per-user state offsets of ``chunk`` (``PerUserResult``; zeros for unknown users)."""
    return None if user_params is None else user_params.params_for([t.user for t in chunk]).to(dev)


class ModelRatingScorer:
    """FsRecModel.predict_ratings with the support (time order) as the history; with
    ``user_params`` (a ``PerUserResult``) each user's fitted offset is added to the user state
    before the rating head, as ``next_item_scores`` does before scoring."""

    predicts_ratings = True

    def __init__(self, model, batch_size: int = 64, user_params=None):
        self.model = model
        self.batch_size = batch_size
        self.user_params = user_params

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        def rate(m, h, chunk, dev):
            q = torch.tensor([t.query_items for t in chunk], dtype=torch.long, device=dev)
            if self.user_params is None:
                return list(m.predict_ratings(h, q).float().cpu().numpy())
            base = m.get_base_model() if hasattr(m, "get_base_model") else m
            state = base.apply_user_params(base.user_state(h), _offsets(self.user_params, chunk, dev))
            e = torch.nn.functional.embedding(q, base.item_vectors())  # [B, Q, H]
            return list(base.rating_head(state.unsqueeze(1).expand_as(e), e).float().cpu().numpy())

        return _model_outputs(self.model, tasks, self.batch_size, rate)


class ModelNextItemScorer:
    """FsRecModel next-item logits of the query items (support as history): "would watch";
    with ``user_params`` (a ``PerUserResult``) the users' fitted state offsets are applied."""

    def __init__(self, model, batch_size: int = 64, user_params=None):
        self.model = model
        self.batch_size = batch_size
        self.user_params = user_params

    def __call__(self, tasks: Sequence[MetaRecTask]) -> list:
        def logits(m, h, chunk, dev):
            if self.user_params is None:
                s = m.next_item_scores(h).float().cpu()
            else:
                base = m.get_base_model() if hasattr(m, "get_base_model") else m
                s = base.next_item_scores(h, user_params=_offsets(self.user_params, chunk, dev)).float().cpu()
            return [s[j, t.query_items].numpy() for j, t in enumerate(chunk)]

        return _model_outputs(self.model, tasks, self.batch_size, logits)


@torch.no_grad()
def _prefix_states(base, tasks: Sequence[MetaRecTask], batch_size: int = 256):
    """(states [P, H], items [P], ratings [P], owner [P]): the frozen base's user state of every
    support prefix items[:t] (t >= 1) of each task, with the support item t it precedes."""
    from ..model import pad_histories

    hist, items, ratings, owner = [], [], [], []
    for u, t in enumerate(tasks):
        for j in range(1, len(t.support_items)):
            hist.append(t.support_items[:j])
            items.append(t.support_items[j])
            ratings.append(t.support_ratings[j])
            owner.append(u)
    dev = next(base.parameters()).device
    states = [base.user_state(pad_histories(hist[i:i + batch_size], base.config.max_seq_len).to(dev)).float()
              for i in range(0, len(hist), batch_size)]
    H = base.config.hidden_size
    return (torch.cat(states) if states else torch.zeros(0, H, device=dev),
            torch.tensor(items, dtype=torch.long, device=dev), torch.tensor(ratings, dtype=torch.float32, device=dev),
            torch.tensor(owner, dtype=torch.long, device=dev))


def fit_rating_offsets(model, tasks: Sequence[MetaRecTask], l2: float, lr: float = 0.05, steps: int = 50):
    """Per-user fit of the rating head on each user's SUPPORT ratings: one user-state offset per
    user (the parametrisation of ``adaptation.peruser``: state + offset; the base frozen),
    minimising the mean squared error of the rating head on the user's support items (each
    predicted from the state of the support prefix before it, as in pretraining) +
    ``l2 * ||offset||^2``. Users' losses are summed and Adam is elementwise, so the stacked fit
    equals fitting each user alone. Query items are never read. Returns a ``PerUserResult``."""
    from ..adaptation.peruser import PerUserResult

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.eval()
    states, items, ratings, owner = _prefix_states(base, tasks)
    U, H = len(tasks), base.config.hidden_size
    P = torch.zeros(U, H, device=states.device, requires_grad=True)
    if items.numel():
        with torch.no_grad():
            e = torch.nn.functional.embedding(items, base.item_vectors()).float()
        w = (1.0 / torch.bincount(owner, minlength=U).clamp(min=1).float())[owner]
        opt = torch.optim.Adam([P], lr=lr)
        flags = [p.requires_grad for p in base.rating_head.parameters()]
        for p in base.rating_head.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(steps):
                pred = base.rating_head(states + P[owner], e)
                loss = (w * (pred - ratings) ** 2).sum() + l2 * (P * P).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            for p, f in zip(base.rating_head.parameters(), flags):
                p.requires_grad_(f)
    params = P.detach().cpu()
    ok = torch.isfinite(params).all(1)
    params[~ok] = 0.0
    return PerUserResult(users=[t.user for t in tasks], params=params, adapted=ok.numpy(),
                         info={"l2": l2, "lr": lr, "steps": steps, "n_pairs": int(items.numel())})


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
