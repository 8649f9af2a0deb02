"""Ranking metrics checked against values worked out by hand (as RecBole's metric tests do)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsrec_serve.evaluation.metrics import (
    hit_at_k, mrr_at_k, ndcg_at_k, rank_of_targets, summarize_ranks,
)

RANKS = [0, 1, 4, 9, 10, 30]  # 0-based ranks of six targets


def test_hit_at_k_by_hand():
    assert hit_at_k(RANKS, 1).tolist() == [1, 0, 0, 0, 0, 0]
    assert hit_at_k(RANKS, 5).tolist() == [1, 1, 1, 0, 0, 0]
    assert hit_at_k(RANKS, 10).tolist() == [1, 1, 1, 1, 0, 0]
    assert hit_at_k(RANKS, 10).mean() == pytest.approx(4 / 6)


def test_ndcg_at_k_by_hand():
    # rank 0 -> 1/log2(2) = 1; rank 1 -> 1/log2(3) = 0.6309; rank 4 -> 1/log2(6) = 0.3869;
    # rank 9 -> 1/log2(11) = 0.2891; rank 10 is outside the top 10 -> 0
    got = ndcg_at_k(RANKS, 10)
    want = [1.0, 0.6309297535714575, 0.38685280723454163, 0.28906482631788788, 0.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.mean() == pytest.approx((1 + 0.6309297535714575 + 0.38685280723454163
                                        + 0.28906482631788788) / 6)
    assert ndcg_at_k([2], 2).tolist() == [0.0]  # rank 2 is the third place: outside the top 2


def test_mrr_at_k_by_hand():
    np.testing.assert_allclose(mrr_at_k(RANKS, 10), [1.0, 0.5, 0.2, 0.1, 0.0, 0.0])
    np.testing.assert_allclose(mrr_at_k(RANKS, 5), [1.0, 0.5, 0.2, 0.0, 0.0, 0.0])


def test_summarize_ranks_means():
    s = summarize_ranks(RANKS, ks=(5, 10))
    assert s["hr@5"] == pytest.approx(0.5)
    assert s["mrr@10"] == pytest.approx((1 + 0.5 + 0.2 + 0.1) / 6)
    assert s["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    assert set(s) == {"hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10"}


def test_negative_rank_is_refused():
    with pytest.raises(ValueError, match="0-based"):
        hit_at_k([-1], 10)


def test_rank_of_targets_counts_better_candidates():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7],
                           [0.0, 0.2, 0.1, 0.8, 0.4]])
    targets = torch.tensor([2, 3])
    # row 0: target 0.5, above it 0.9 and 0.7 -> rank 2; row 1: 0.8 is the best -> rank 0
    assert rank_of_targets(scores, targets).tolist() == [2, 0]


def test_rank_of_targets_excludes_history_but_never_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]])
    exclude = torch.tensor([[True, True, False, False, False]])  # padding + a history item
    assert rank_of_targets(scores, torch.tensor([2]), exclude).tolist() == [1]  # only 0.7 above
    exclude_t = torch.tensor([[False, False, True, False, False]])  # target marked: still ranked
    assert rank_of_targets(scores, torch.tensor([2]), exclude_t).tolist() == [2]


def test_rank_ties_pessimistic_and_optimistic():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.9, 0.1]])
    t = torch.tensor([1])
    # pessimistic: the two other 0.5s and the 0.9 rank above -> 3; optimistic: only 0.9 -> 1
    assert rank_of_targets(scores, t).tolist() == [3]
    assert rank_of_targets(scores, t, ties="optimistic").tolist() == [1]
    with pytest.raises(ValueError):
        rank_of_targets(scores, t, ties="random")
