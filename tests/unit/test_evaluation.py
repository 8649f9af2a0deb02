"""Evaluation protocols: full ranking with history exclusion, sampled negatives, ratings,
the popularity baseline, and a saved model evaluated through the library and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsrec_serve.data import Example, UserSequence
from fsrec_serve.errors import ConfigError, EmptyUserError
from fsrec_serve.evaluation import PopularityModel, evaluate_next_item, evaluate_ratings
from fsrec_serve.model.modeling_fsrec import MASK_VALUE


class FixedScorer:
    """Every user gets the same scores: item i scores ``scores[i]`` (column 0 = padding)."""

    max_seq_len = 5

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.seen: list[torch.Tensor] = []

    def next_item_scores(self, history_ids):
        self.seen.append(history_ids.clone())
        return self.scores.unsqueeze(0).expand(history_ids.shape[0], -1).clone()

    def predict_ratings(self, history_ids, items):
        return torch.full(items.shape, 3.0)


# items 1..6 score 6,5,4,3,2,1 (item 1 best)
SCORES = [MASK_VALUE, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]


def test_full_ranking_excludes_the_users_history():
    scorer = FixedScorer(SCORES)
    # target 4 (4th best); history {1, 2} removed from the candidates -> rank 1 (only item 3 above)
    ex = [Example("u", [1, 2], 4)]
    r = evaluate_next_item(scorer, ex, ks=(1, 2), return_ranks=True)
    assert r["ranks"] == [1]
    assert r["hr@1"] == 0.0 and r["hr@2"] == 1.0
    assert r["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert r["mrr@2"] == pytest.approx(0.5)
    # without exclusion: items 1, 2, 3 rank above -> rank 3
    assert evaluate_next_item(scorer, ex, ks=(5,), exclude_history=False, return_ranks=True)["ranks"] == [3]


def test_history_longer_than_the_window_is_still_excluded():
    scorer = FixedScorer(SCORES)  # reads only 5 items
    ex = [Example("u", [1, 2, 3, 5, 6, 2], 4)]  # item 1 is older than the window
    assert evaluate_next_item(scorer, ex, return_ranks=True)["ranks"] == [0]
    assert scorer.seen[0].shape == (1, 5)  # left-padded to the scorer's length, newest last
    assert scorer.seen[0][0].tolist() == [2, 3, 5, 6, 2]


def test_candidate_mask_restricts_the_catalogue():
    scorer = FixedScorer(SCORES)
    cm = torch.tensor([False, False, True, True, True, True, True])  # item 1 not a candidate
    r = evaluate_next_item(scorer, [Example("u", [6], 3)], candidate_mask=cm, return_ranks=True)
    assert r["ranks"] == [1]  # only item 2 above


def test_results_do_not_depend_on_batch_size(tiny_model, tiny_splits):
    model = tiny_model("causal")
    ex = tiny_splits.loo_test()
    a = evaluate_next_item(model, ex, batch_size=1)
    b = evaluate_next_item(model, ex, batch_size=512)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12)
    assert a["n"] == len(ex)


def test_sampled_negatives_protocol():
    scorer = FixedScorer([MASK_VALUE] + [float(200 - i) for i in range(1, 201)])  # 200 items
    ex = [Example(str(u), [1, 2, 3], 50 + u) for u in range(20)]
    r1 = evaluate_next_item(scorer, ex, sampled_negatives=100, seed=3, return_ranks=True)
    r2 = evaluate_next_item(scorer, ex, sampled_negatives=100, seed=3, return_ranks=True)
    r3 = evaluate_next_item(scorer, ex, sampled_negatives=100, seed=4, return_ranks=True)
    assert r1 == r2  # seeded
    assert r1["ranks"] != r3["ranks"]
    assert all(0 <= x <= 100 for x in r1["ranks"])
    # the target ranks by how many of the 100 sampled items score above it; a target in the
    # middle of the catalogue (~50 of 197 candidates above) lands around rank 25
    assert 10 < np.mean(r1["ranks"]) < 40
    full = evaluate_next_item(scorer, ex, return_ranks=True)["ranks"]
    assert all(s <= f for s, f in zip(r1["ranks"], full))  # sampling never ranks the target lower


def test_sampled_negatives_too_few_items_is_a_clear_error():
    scorer = FixedScorer(SCORES)
    with pytest.raises(ConfigError, match="sampled_negatives"):
        evaluate_next_item(scorer, [Example("u", [1], 2)], sampled_negatives=100)


def test_empty_inputs_are_refused():
    scorer = FixedScorer(SCORES)
    with pytest.raises(EmptyUserError):
        evaluate_next_item(scorer, [])
    with pytest.raises(EmptyUserError, match="'u7'"):
        evaluate_next_item(scorer, [Example("u7", [], 2)])


def test_targets_from_another_item_map_are_refused():
    with pytest.raises(ConfigError, match="item map"):
        evaluate_next_item(FixedScorer(SCORES), [Example("u", [1], 99)])


def test_evaluate_ratings_rmse_mae_by_hand():
    ex = [Example("a", [1], 2, rating=5.0), Example("b", [1], 3, rating=1.0),
          Example("c", [2], 4, rating=3.0)]
    r = evaluate_ratings(FixedScorer(SCORES), ex)  # predicts 3.0 everywhere
    assert r["rmse"] == pytest.approx(math.sqrt((4 + 4 + 0) / 3))
    assert r["mae"] == pytest.approx((2 + 2 + 0) / 3)


def test_popularity_baseline_counts_and_ranks():
    seqs = [UserSequence("a", [1, 2, 3], [1.0] * 3), UserSequence("b", [2, 3], [1.0] * 2),
            UserSequence("c", [3], [1.0])]
    pop = PopularityModel.fit(seqs, num_items=4)
    assert pop.counts.tolist() == [MASK_VALUE, 1.0, 2.0, 3.0, 0.0]
    assert pop.top_k(2) == [3, 2]
    s = pop.next_item_scores(torch.zeros(2, 3, dtype=torch.long))
    assert s.shape == (2, 5)
    # user with history {3}: candidates 1 (1), 2 (2), 4 (0) -> target 2 is first, target 4 last
    r = evaluate_next_item(pop, [Example("x", [3], 2), Example("y", [3], 4)], return_ranks=True)
    assert r["ranks"] == [0, 2]


def test_popularity_ties_are_pessimistic():
    pop = PopularityModel(np.array([0, 5, 5, 5, 1], dtype=np.float32))
    assert evaluate_next_item(pop, [Example("u", [4], 1)], return_ranks=True)["ranks"] == [2]
    assert evaluate_next_item(pop, [Example("u", [4], 1)], ties="optimistic",
                              return_ranks=True)["ranks"] == [0]


def test_model_scores_a_learnable_pattern_better_than_popularity(tiny_model, tiny_loo,
                                                                 fast_train_config):
    """Users of the tiny log walk the catalogue i -> i+1: a trained model must beat popularity."""
    from fsrec_serve.training import train_loop

    model = tiny_model("causal", max_seq_len=8)
    model.item_map = tiny_loo.item_map
    train_loop(model, tiny_loo.loo_train(), fast_train_config(epochs=15, lr=1e-2))
    ex = tiny_loo.loo_test()
    m = evaluate_next_item(model, ex, ks=(1, 10))
    p = evaluate_next_item(PopularityModel.fit(tiny_loo.loo_train(), len(tiny_loo.item_map)), ex,
                           ks=(1, 10))
    assert m["hr@1"] > 0.8
    assert m["ndcg@10"] > p["ndcg@10"] + 0.3
