"""RecBole-MetaRec protocol: metrics against hand-computed values, the split, the baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsrec_serve.data import UserSequence
from fsrec_serve.experiments.metarec import (MetaRecConfig, MetaRecTask, evaluate_metarec, make_metarec_split,
                                             metarec_metrics, split_counts)
from fsrec_serve.experiments.metarec_scorers import (BlendScorer, ItemKNNScorer, ItemMeanScorer, ModelNextItemScorer,
                                                     ModelRatingScorer, fit_rating_offsets, tune_blend)

D = [1 / math.log2(i + 2) for i in range(5)]  # discounts of ranks 1..5
IDCG = sum(D)


def test_perfect_and_reversed_rankings():
    true = [5, 4, 4, 3, 3, 2, 2, 1, 1, 1]  # no tie at the 5th/6th place (3 vs 2)
    m = metarec_metrics(true, true)
    assert m["ndcg@5"] == pytest.approx(1.0)
    assert m["precision@5"] == 1.0 and m["mrr@5"] == 1.0
    assert m["graded_ndcg@5"] == pytest.approx(1.0)
    rev = metarec_metrics([-x for x in true], true)  # predicted top 5 = the 5 lowest
    assert rev["ndcg@5"] == 0.0 and rev["precision@5"] == 0.0 and rev["mrr@5"] == 0.0


def test_hand_computed_binary_and_graded_values():
    # query of 10 items; positives = the 5 highest true ratings = items 0..4 (no ties at the cut)
    true = [5, 5, 4, 4, 4, 2, 2, 1, 1, 1]
    # predicted order: item 5 (neg), item 0 (pos), item 6 (neg), item 2 (pos), item 1 (pos), ...
    pred = [9, 6, 7, 0, 0.5, 10, 8, -1, -2, -3]
    m = metarec_metrics(pred, true)
    hits = [0, 1, 0, 1, 1]  # top 5 predicted: items 5, 0, 6, 2, 1
    assert m["ndcg@5"] == pytest.approx(sum(h * d for h, d in zip(hits, D)) / IDCG)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)) / IDCG)
    assert m["precision@5"] == pytest.approx(3 / 5)
    assert m["mrr@5"] == pytest.approx(1 / 2)
    gains = [2, 5, 2, 4, 5]  # true ratings of items 5, 0, 6, 2, 1
    ideal = [5, 5, 4, 4, 4]
    assert m["graded_ndcg@5"] == pytest.approx(sum(g * d for g, d in zip(gains, D)) /
                                               sum(g * d for g, d in zip(ideal, D)))


def test_positives_are_taken_with_torch_topk_like_recbole():
    """Ties at the 5th place: the positives are whatever torch.topk(true, 5) returns (as
    RecBole-MetaRec's MetaCollector), not every item with the 5th-highest rating."""
    true = [4, 4, 4, 4, 4, 4, 4, 1, 1, 1]  # 7 items share the top rating
    _, top = torch.topk(torch.tensor(true, dtype=torch.float32), 5)
    pos = set(top.tolist())
    pred = [0.0] * 10
    for rank, i in enumerate(sorted(pos)):
        pred[i] = 10.0 - rank  # predict exactly torch.topk's positives first
    m = metarec_metrics(pred, true)
    assert m["ndcg@5"] == pytest.approx(1.0) and m["precision@5"] == 1.0
    assert len(pos) == 5  # exactly 5 positives even though 7 items tie


def test_random_scores_average_about_one_half():
    rng = np.random.default_rng(0)
    vals = [metarec_metrics(rng.random(10), rng.integers(1, 6, 10).astype(float))["ndcg@5"]
            for _ in range(2000)]
    assert 0.47 < float(np.mean(vals)) < 0.53


def test_split_counts_follow_recbole_rounding():
    assert split_counts(585, [0.8, 0.1, 0.1]) == [469, 58, 58]
    assert sum(split_counts(10, [0.8, 0.1, 0.1])) == 10
    assert split_counts(10, [0.8, 0.1, 0.1]) == [8, 1, 1]


def test_make_split_on_movielens(ml100k):
    sp = make_metarec_split(ml100k, MetaRecConfig(seed=0))
    users = set(sp.train_users) | set(sp.valid_users) | set(sp.test_users)
    assert len(users) == len(sp.train_users) + len(sp.valid_users) + len(sp.test_users)
    counts = {u: len(sp.splits.full_sequences[u]) for u in users}
    assert all(13 <= c <= 100 for c in counts.values())
    assert len(sp.test_users) == 58 == len(sp.test_tasks)  # "a split has only 58 test users"
    for t in sp.test_tasks:
        full = sp.splits.full_sequences[t.user]
        assert len(t.query_items) == 10
        assert len(t.support_items) + 10 == len(full)
        assert sorted(t.support_items + t.query_items) == sorted(full.items)
        # support keeps time order
        pos = {it: j for j, it in enumerate(full.items)}
        assert [pos[i] for i in t.support_items] == sorted(pos[i] for i in t.support_items)
    # another seed draws other test users
    sp2 = make_metarec_split(ml100k, MetaRecConfig(seed=1))
    assert set(sp2.test_users) != set(sp.test_users)
    # item-mean baseline is computed on the training users only and lands near the published
    # independent check (about 0.615 on average over splits; one split varies by ~0.03)
    im = ItemMeanScorer(sp.train_sequences(), sp.num_items)
    r = evaluate_metarec(im, sp.test_tasks)
    assert 0.55 < r["ndcg@5"] < 0.68 and 0.8 < r["rmse"] < 1.3 and r["n"] == 58


def test_item_mean_uses_training_users_only():
    train = [UserSequence("a", [1, 2], [5.0, 1.0]), UserSequence("b", [1], [3.0])]
    im = ItemMeanScorer(train, num_items=3)
    t = MetaRecTask("x", [1], [5.0], [1, 2, 3], [1.0, 2.0, 3.0])
    got = im([t])[0]
    assert got[0] == pytest.approx(4.0) and got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(3.0)  # unseen item: global mean (5 + 1 + 3) / 3


def test_blend_tuning_on_validation_finds_the_informative_component():
    rng = np.random.default_rng(1)
    tasks = [MetaRecTask(str(u), [1], [3.0], list(range(1, 11)), list(rng.integers(1, 6, 10).astype(float)))
             for u in range(40)]
    truth = {t.user: np.asarray(t.query_ratings) for t in tasks}
    good = lambda ts: [truth[t.user] + 0.1 * rng.standard_normal(10) for t in ts]  # noqa: E731
    noise = lambda ts: [rng.standard_normal(10) for _ in ts]  # noqa: E731
    w, score, trials = tune_blend({"good": good, "noise": noise}, tasks, grid=(0.0, 1.0))
    assert w["good"] > 0 and w["noise"] == 0.0 and score > 0.9 and len(trials) == 3
    out = BlendScorer({"good": good}, {"good": 1.0})(tasks[:2])
    assert len(out) == 2 and out[0].shape == (10,)


def test_model_rating_scorer_reads_the_support_as_history():
    from fsrec_serve.model import FsRecConfig, FsRecModel

    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16, max_seq_len=6)).eval()
    t1 = MetaRecTask("a", [1, 2, 3], [5.0, 4.0, 3.0], list(range(5, 15)), [3.0] * 10)
    t2 = MetaRecTask("b", [7, 8], [1.0, 2.0], list(range(5, 15)), [3.0] * 10)
    out = ModelRatingScorer(m)([t1, t2])
    assert out[0].shape == (10,) and np.all((out[0] >= 1.0) & (out[0] <= 5.0))
    assert np.abs(out[0] - out[1]).max() > 0  # different support -> different predictions
    r = evaluate_metarec(ModelRatingScorer(m), [t1, t2])
    assert "rmse" in r and r["n"] == 2


def test_per_user_offsets_in_the_model_scorers_and_the_rating_fit():
    from fsrec_serve.adaptation import PerUserResult
    from fsrec_serve.model import FsRecConfig, FsRecModel

    torch.manual_seed(0)
    m = FsRecModel(FsRecConfig(num_items=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16, max_seq_len=6)).eval()
    tasks = [MetaRecTask("a", [1, 2, 3, 4], [5.0, 5.0, 5.0, 5.0], list(range(5, 15)), [3.0] * 10),
             MetaRecTask("b", [7, 8, 9], [1.0, 1.0, 1.0], list(range(5, 15)), [3.0] * 10)]
    zero = PerUserResult(users=["a", "b"], params=torch.zeros(2, 8), adapted=np.ones(2, dtype=bool))
    for cls in (ModelRatingScorer, ModelNextItemScorer):  # zero offsets = the base model exactly
        for x, y in zip(cls(m)(tasks), cls(m, user_params=zero)(tasks)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    fit = fit_rating_offsets(m, tasks, l2=1e-3, lr=0.1, steps=60)
    assert fit.users == ["a", "b"] and fit.params.shape == (2, 8) and torch.isfinite(fit.params).all()
    base, tuned = ModelRatingScorer(m)(tasks), ModelRatingScorer(m, user_params=fit)(tasks)
    assert tuned[0].mean() > base[0].mean() and tuned[1].mean() < base[1].mean()  # towards 5 and 1
    strong = fit_rating_offsets(m, tasks, l2=100.0, lr=0.1, steps=60)
    assert strong.params.norm() < fit.params.norm()  # l2 pulls towards the base model
    other = [MetaRecTask(t.user, t.support_items, t.support_ratings, t.query_items, [1.0] * 10) for t in tasks]
    torch.testing.assert_close(fit_rating_offsets(m, other, l2=1e-3, lr=0.1, steps=60).params, fit.params)
    r = evaluate_metarec(ModelRatingScorer(m, user_params=fit), tasks, per_task=True)
    assert len(r["per_task_ndcg@5"]) == 2 and r["ndcg@5"] == pytest.approx(np.mean(r["per_task_ndcg@5"]))


def test_item_knn_follows_the_support_ratings_of_similar_items():
    # items 1 and 2 are rated alike by every training user, items 3 and 4 alike; 1/2 vs 3/4 opposite
    train = []
    for u in range(20):
        a = 5.0 if u % 2 else 1.0
        b = 6.0 - a
        train.append(UserSequence(str(u), [1, 2, 3, 4], [a, a, b, b]))
    knn = ItemKNNScorer(train, num_items=4, shrinkage=0.0)
    assert knn.sim[1, 2] == pytest.approx(1.0, abs=1e-5) and knn.sim[1, 3] == pytest.approx(-1.0, abs=1e-5)
    t = MetaRecTask("x", [1], [5.0], [2, 3, 4], [5.0, 1.0, 1.0])  # likes item 1 -> likes 2, not 3/4
    pred = knn([t])[0]
    assert pred[0] > pred[1] and pred[0] > pred[2]
    assert pred[0] == pytest.approx(3.0 + 2.0, abs=1e-4)  # mean 3 + deviation of item 1 (+2)


# -- per-user rating head -------------------------------------------------------------------------
def test_pair_differences_by_hand():
    from fsrec_serve.experiments.metarec_scorers import pair_differences

    F = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    D = pair_differences([F], [[5.0, 3.0, 3.0]])  # pairs (0 > 1), (0 > 2); the 3-3 tie is no pair
    assert sorted(map(tuple, D.tolist())) == [(-1.0, -2.0), (1.0, -1.0)]


def test_fit_pairwise_learns_the_ranking_direction_and_lam_pulls_to_the_prior():
    from fsrec_serve.experiments.metarec_scorers import fit_pairwise

    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 2))
    r = F[:, 0] * 3.0  # only feature 0 orders the items
    i, j = np.nonzero(r[:, None] > r[None, :])
    w = fit_pairwise(F[i] - F[j], np.zeros(2), lam=0.0, reg=1e-2, iters=30)
    assert w[0] > 1.0 and abs(w[1]) < 0.3 * w[0]
    prior = np.array([0.0, 5.0])
    w_strong = fit_pairwise(F[i] - F[j], prior, lam=1e6)
    assert np.allclose(w_strong, prior, atol=1e-3)


def _tiny_rating_train(n_users=30, n_items=12, seed=0):
    rng = np.random.default_rng(seed)
    quality = np.linspace(1.0, 5.0, n_items)  # item i+1 is better than item i
    out = []
    for u in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), size=8, replace=False).tolist()
        out.append(UserSequence(str(u), items, [float(np.clip(round(quality[i - 1] + rng.normal(0, 0.5)), 1, 5))
                                                for i in items]))
    return out


def test_support_features_are_leave_one_out_and_the_head_ranks_good_items_first():
    from fsrec_serve.experiments.metarec import simulated_tasks
    from fsrec_serve.experiments.metarec_scorers import PerUserHeadScorer, SupportFeatures, fit_global_head

    train = _tiny_rating_train()
    feats = SupportFeatures(train, 12, None)
    task = MetaRecTask("x", [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], [5, 6, 7, 8, 9, 10, 11, 12, 1, 2],
                       [5.0] * 10)
    changed = MetaRecTask("x", [1, 2, 3, 4], [1.0, 2.0, 3.0, 1.0], task.query_items, task.query_ratings)
    # item 4's own rating never feeds its own support features (kNN, MF, genre columns)
    assert np.allclose(feats.support_features(task)[3, 1:4], feats.support_features(changed)[3, 1:4])
    w = fit_global_head(feats, simulated_tasks(train, query_size=4))
    q = MetaRecTask("y", [2, 3, 4, 5], [2.0, 2.0, 3.0, 3.0], list(range(3, 13)), [5.0] * 10)
    glob = PerUserHeadScorer(feats, w, float("inf"))([q])[0]
    assert np.corrcoef(glob, np.arange(3, 13))[0, 1] > 0.8  # better items score higher
    assert np.allclose(PerUserHeadScorer(feats, w, 1e9)([q])[0], glob, atol=1e-4)
