"""Arrivals protocol: time cut, rounds, queries without future leaks, paired statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsrec_serve.data import Interactions
from fsrec_serve.errors import ConfigError
from fsrec_serve.experiments.arrivals import (ArrivalsConfig, CohortUpdateConfig, arrival_queries,
                                              arrival_users, build_timeline, cohort_update, gap_closed,
                                              gap_closed_ci, new_slice, paired_relative_gain,
                                              sequences_before, splits_before, train_valid_before)


def log_with_arrivals() -> Interactions:
    """Users 1-8 active at t = 0..49; users 9-12 first seen at t >= 80 (4 events each, one per
    10 s); items 100..109, item 109 only ever seen after t = 80."""
    users, items, ts = [], [], []
    for u in range(1, 9):
        for j in range(10):
            users.append(str(u)), items.append(str(100 + (u + j) % 9)), ts.append(5 * j + u % 5)
    for u in range(9, 13):
        for j in range(4):
            users.append(str(u)), items.append(str(100 + (u + j) % 10)), ts.append(80 + 10 * j + u)
    n = len(users)
    return Interactions(name="tiny-time", users=np.array(users, dtype=object),
                        items=np.array(items, dtype=object), ratings=np.ones(n, dtype=np.float32),
                        timestamps=np.array(ts, dtype=np.int64), has_timestamps=True)


@pytest.fixture(scope="module")
def tl():
    return build_timeline(log_with_arrivals(), ArrivalsConfig(quantile=0.85, n_rounds=2))


def test_cut_and_arrivals(tl):
    # 96 events, 80 before t = 50; sorted times 80, 81 are 89, 90: the 85 % quantile is
    # 89 + 0.75 (int: 89), the first event of user 9
    assert tl.T == 89
    assert sorted(arrival_users(tl), key=int) == ["9", "10", "11", "12"]
    assert tl.boundaries[0] == tl.T and len(tl.boundaries) == 2 and tl.boundaries[1] > tl.T
    assert tl.round_of(tl.T - 1) == 0 and tl.round_of(tl.boundaries[1]) == 1


def test_queries_use_the_first_k_and_answer_with_the_round_model(tl):
    qs = arrival_queries(tl, 2)
    assert len(qs) == 4
    for q in qs:
        ev = tl.events[q.example.user]
        assert q.example.history == [ev[0].item, ev[1].item] and q.example.target == ev[2].item
        assert q.time == ev[2].time and q.round == tl.round_of(ev[2].time)
        assert tl.boundaries[q.round] <= q.time
    assert arrival_queries(tl, 4) == []  # nobody has 5 events
    with pytest.raises(ConfigError):
        arrival_queries(tl, 0)


def test_nothing_at_or_after_the_cut_is_used(tl):
    t = tl.boundaries[1]
    for s in sequences_before(tl, t):
        times = [e.time for e in tl.events[s.user]][: len(s)]
        assert max(times) < t and s.items == [e.item for e in tl.events[s.user]][: len(s)]
    train, valid = train_valid_before(tl, t)
    assert all(len(s) >= 2 for s in train) and all(e.target not in () for e in valid)
    sp = splits_before(tl, tl.T)
    assert tl.item_map.index("109") in set(sp.cold_items.tolist())  # unseen before T
    sl = new_slice(tl, tl.T, t)
    assert {s.user for s in sl} <= {u for u, ev in tl.events.items() if any(tl.T <= e.time < t for e in ev)}


def test_paired_relative_gain_and_gap_closed_by_hand():
    # users a, b, c; a has two queries
    method, base, users = [1.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.25, 0.25], ["a", "a", "b", "c"]
    g = paired_relative_gain(method, base, users, n_boot=500)
    assert g["mean"] == pytest.approx(2.0 / 1.5 - 1.0)
    assert g["n_users"] == 3 and g["ci_low"] <= g["mean"] <= g["ci_high"]
    assert gap_closed(0.15, 0.10, 0.20) == pytest.approx(0.5)
    assert np.isnan(gap_closed(0.15, 0.10, 0.10))
    c = gap_closed_ci([0.15, 0.15], [0.1, 0.1], [0.2, 0.2], ["a", "b"], n_boot=200)
    assert c["mean"] == pytest.approx(0.5) and c["ci_low"] == pytest.approx(0.5)


def test_cohort_update_trains_a_copy(tl, tiny_model_config):
    from fsrec_serve.model import FsRecModel

    torch.manual_seed(0)
    model = FsRecModel(tiny_model_config(len(tl.item_map), objective="causal")).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seqs = new_slice(tl, 0, tl.boundaries[1])
    out = cohort_update(model, seqs, CohortUpdateConfig(epochs=1, lr=1e-2, batch_size=8))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in out.named_parameters())
    assert not any(p.requires_grad for p in out.parameters())
