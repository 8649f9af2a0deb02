"""Split invariants on real ML-100K and the tiny log: no cold user or cold item leaks into
pretraining, leave-one-out layout, support/query, determinism from the seed."""

from __future__ import annotations

import pytest

from fsrec_serve.data import SplitConfig, make_splits
from fsrec_serve.errors import ConfigError


@pytest.fixture(scope="module")
def ml_default(ml100k):
    return make_splits(ml100k, SplitConfig(seed=0))


def test_no_cold_user_or_cold_item_in_pretraining(ml_default):
    sp = ml_default
    cold_users = {s.user for s in sp.cold_users}
    cold_items = set(sp.cold_items.tolist())
    assert len(cold_users) == round(0.1 * 943) and len(cold_items) == round(0.05 * 1682)
    for s in sp.warm:
        assert s.user not in cold_users
        assert not cold_items & set(s.items)
    for s in sp.loo_train():
        assert not cold_items & set(s.items)
    for e in sp.loo_valid() + sp.loo_test():
        assert e.user not in cold_users and e.target not in cold_items
        assert not cold_items & set(e.history)
    assert {s.user for s in sp.warm} | cold_users == set(sp.full_sequences)


def test_cold_items_are_the_latest_items(ml100k, ml_default):
    sp = ml_default
    first = {}
    for u, i, t in zip(ml100k.users, ml100k.items, ml100k.timestamps):
        first[i] = min(first.get(i, t), t)
    cold_first = [first[sp.item_map.raw(i)] for i in sp.cold_items]
    warm_first = [first[r] for r in sp.item_map.raw_ids if sp.item_map.index(r) not in set(sp.cold_items.tolist())]
    assert min(cold_first) >= max(warm_first) - 1  # every cold item appeared after every warm one


def test_leave_one_out_layout(ml_default):
    sp = ml_default
    s = sp.warm[0]
    tr, va, te = sp.loo_train()[0], sp.loo_valid()[0], sp.loo_test()[0]
    assert tr.items == s.items[:-2]
    assert va.history == s.items[:-2] and va.target == s.items[-2]
    assert te.history == s.items[:-1] and te.target == s.items[-1]
    assert te.rating == s.ratings[-1]
    assert len(sp.loo_train()) == len(sp.warm) == len(sp.loo_test())


def test_every_user_protocol(ml100k):
    sp = make_splits(ml100k, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))
    assert len(sp.warm) == 943 and not sp.cold_users and len(sp.cold_items) == 0
    assert sum(len(s) for s in sp.warm) == 100_000


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_query_never_in_support(ml_default, k):
    support, query = ml_default.support_query(k)
    assert len(support) == len(query) == len(ml_default.cold_users)  # all have >= 11 items
    for s, q in zip(support, query):
        assert len(s) == k and s.user == q.user
        assert q.history == s.items
        full = ml_default.full_sequences[s.user]
        assert q.target == full.items[k]  # the (k+1)-th interaction
        assert q.target not in s.items  # ML-100K has no repeats


def test_support_size_must_be_positive(ml_default):
    with pytest.raises(ConfigError, match="k must be >= 1"):
        ml_default.support_query(0)


def test_splits_are_deterministic_from_the_seed(ml100k):
    a = make_splits(ml100k, SplitConfig(seed=7))
    b = make_splits(ml100k, SplitConfig(seed=7))
    c = make_splits(ml100k, SplitConfig(seed=8))
    assert [s.user for s in a.cold_users] == [s.user for s in b.cold_users]
    assert a.cold_items.tolist() == b.cold_items.tolist()
    assert [s.items for s in a.warm] == [s.items for s in b.warm]
    assert a.item_map == b.item_map == c.item_map
    assert {s.user for s in a.cold_users} != {s.user for s in c.cold_users}


def test_least_interacted_cold_items(tiny_interactions):
    sp = make_splits(tiny_interactions, SplitConfig(seed=0, cold_item_frac=0.1,
                                                    cold_item_strategy="least"))
    counts = {}
    for i in tiny_interactions.items:
        counts[i] = counts.get(i, 0) + 1
    cold = [counts[sp.item_map.raw(i)] for i in sp.cold_items]
    warm = [c for r, c in counts.items() if sp.item_map.index(r) not in set(sp.cold_items.tolist())]
    assert max(cold) <= min(warm)


def test_bad_split_config(tiny_interactions):
    with pytest.raises(ConfigError):
        make_splits(tiny_interactions, SplitConfig(cold_user_frac=1.0))
    with pytest.raises(ConfigError, match="cold_item_strategy"):
        make_splits(tiny_interactions, SplitConfig(cold_item_strategy="oldest"))


def test_item_features_follow_the_item_map(ml100k, ml_default):
    sp = ml_default
    assert sp.item_features.shape == (1683, 19)
    assert (sp.item_features[0] == 0).all()  # padding row
    idx = sp.item_map.index("1")
    assert sp.item_features[idx].tolist() == ml100k.item_features["1"].tolist()
