"""The Store contract (fsrec_serve/store/base.py), run against a real SQLite file and a real redis-server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fsrec_serve.errors import InvalidEventError
from fsrec_serve.store import Event, SQLiteStore
from fsrec_serve.store.redis import RedisStore


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """Factory of store instances that share one backend location (a file / a redis database)."""
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite3"

        def factory(**kw):
            return SQLiteStore(path, **kw)
    else:
        url = request.getfixturevalue("redis_url")

        def factory(**kw):
            return RedisStore(url, **kw)
    made = []

    def make(**kw):
        made.append(factory(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def ev(eid, user="u1", item=1, ts=100.0, raw=""):
    return Event(event_id=eid, user=user, item=item, ts=ts, raw_item=raw)


def drain(store, consumer="learner"):
    changed = set()
    while batch := store.pending(consumer):
        changed |= store.apply(consumer, batch)
    return changed


def test_duplicate_event_ids_are_stored_once(make_store):
    a, b = make_store(), make_store()
    assert a.append([ev("e1"), ev("e2", ts=101), ev("e1", ts=999)]) == [True, True, False]
    assert a.append([ev("e1"), ev("e3", ts=102)]) == [False, True]
    assert b.append([ev("e2"), ev("e3")]) == [False, False]  # another instance sees the same ids
    got = a.pending("learner")
    assert [e.event_id for _, e in got] == ["e1", "e2", "e3"] and got[0][1].ts == 100.0
    assert a.counts() == {"events": 3, "duplicates": 4, "new_item_events": 0, "users": 0}


def test_apply_is_exactly_once(make_store):
    s, other = make_store(), make_store()
    s.append([ev(f"e{i}", user=f"u{i % 2}", item=i + 1, ts=100 + i) for i in range(5)])
    n, oldest = s.lag("learner")
    assert n == 5 and abs(oldest - time.time()) < 60
    batch = s.pending("learner")
    assert s.apply("learner", batch) == {"u0", "u1"}
    assert s.apply("learner", batch) == set()  # the same batch again: skipped
    assert other.apply("learner", batch) == set()  # ... also from another instance
    st = s.states(["u0", "u1", "nobody"])
    assert set(st) == {"u0", "u1"}
    assert (st["u0"].event_count, st["u1"].event_count) == (3, 2)
    assert st["u0"].history == [1, 3, 5] and st["u1"].history == [2, 4]
    assert s.pending("learner") == [] and s.lag("learner") == (0, 0.0)
    assert sorted(s.users()) == ["u0", "u1"] and s.counts()["users"] == 2


def test_consumers_are_independent_and_pending_keeps_order_and_limit(make_store):
    s = make_store()
    s.append([ev(f"e{i}", item=i + 1, ts=100 + i) for i in range(5)])
    first = s.pending("a", limit=2)
    assert [e.event_id for _, e in first] == ["e0", "e1"]
    s.apply("a", first)
    assert [e.event_id for _, e in s.pending("a")] == ["e2", "e3", "e4"]
    assert len(s.pending("b")) == 5  # another consumer has applied nothing
    assert s.lag("a")[0] == 3 and s.lag("b")[0] == 5


def test_a_late_event_lands_at_its_time(make_store):
    s = make_store()
    s.append([ev("a", item=1, ts=10.0), ev("b", item=2, ts=20.0), ev("c", item=3, ts=30.0)])
    drain(s)
    s.append([ev("late", item=9, ts=15.0), ev("tie", item=8, ts=20.0)])
    drain(s)
    st = s.states(["u1"])["u1"]
    assert st.history == [1, 9, 2, 8, 3]  # a tie goes after what is already there
    assert st.times == [10.0, 15.0, 20.0, 20.0, 30.0]
    assert st.newest_ts == 30.0 and st.event_count == 5


def test_timestamps_round_trip_exactly(make_store):
    s = make_store()
    t = 1_700_000_000.123456789
    s.append([ev("a", item=4, ts=t), ev("b", item=5, ts=0.1)])
    drain(s)
    st = s.states(["u1"])["u1"]
    assert st.times == [0.1, t] and st.newest_ts == t


def test_history_is_cut_to_max_history_newest_kept(make_store):
    s = make_store(max_history=3)
    s.append([ev(f"e{i}", item=i + 1, ts=100 + i) for i in range(5)])
    drain(s)
    s.append([ev("old", item=42, ts=1.0)])  # older than everything kept: counted, then cut away
    drain(s)
    st = s.states(["u1"])["u1"]
    assert st.history == [3, 4, 5] and st.event_count == 6 and st.newest_ts == 104


def test_unknown_items_are_counted_not_kept(make_store):
    s = make_store()
    s.append([ev("a", item=0, ts=1, raw="new-sku"), ev("b", item=7, ts=2), ev("c", item=0, ts=3, raw="x")])
    assert s.pending("learner")[0][1].raw_item == "new-sku"
    drain(s)
    st = s.states(["u1"])["u1"]
    assert st.history == [7] and st.event_count == 3 and st.newest_ts == 3
    assert s.counts()["new_item_events"] == 2


def test_params_round_trip_bit_exact_with_fingerprint(make_store):
    s = make_store()
    rng = np.random.default_rng(0)
    p = rng.standard_normal(33).astype(np.float32)
    p[:3] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]  # signed zero, subnormal, largest
    s.append([ev("a", user="u1", item=3)])
    drain(s)
    s.put_params({"u1": p, "u2": np.ones(33)}, "fp-1", 123.5)
    st = s.states(["u1", "u2"])
    got = st["u1"].params_for("fp-1")
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), p.view(np.uint32))
    assert st["u1"].fingerprint == "fp-1" and st["u1"].fit_time == 123.5 and st["u1"].history == [3]
    assert st["u1"].params_for("fp-2") is None and st["u1"].params_for("") is None
    assert st["u2"].event_count == 0 and st["u2"].history == []  # params of a user without events
    s.put_params({"u2": np.zeros(33)}, "fp-2", 124.0)
    assert s.clear_params("fp-2") == 1  # u1 (fp-1) loses its params, u2 (fp-2) keeps them
    st = s.states(["u1", "u2"])
    assert st["u1"].params is None and st["u1"].fingerprint == "" and st["u1"].history == [3]
    assert st["u2"].fingerprint == "fp-2" and np.array_equal(st["u2"].params_for("fp-2"), np.zeros(33))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params_are_refused_and_nothing_is_written(make_store, bad):
    s = make_store()
    good = np.ones(4, dtype=np.float32)
    with pytest.raises(InvalidEventError, match="not finite"):
        s.put_params({"ok": good, "bad": np.array([1, bad, 2, 3], dtype=np.float32)}, "fp", 1.0)
    assert s.states(["ok", "bad"]) == {}
    with pytest.raises(InvalidEventError, match="fingerprint"):
        s.put_params({"ok": good}, "", 1.0)
    assert s.states(["ok"]) == {}


def test_concurrent_appends_from_threads(make_store):
    s = make_store()
    barrier = threading.Barrier(4)
    results = []

    def work(t):
        barrier.wait()
        for j in range(10):  # every id twice: once by this thread, once by its neighbour
            results.extend(s.append([ev(f"t{t}-{j}", user=f"u{t}", item=j + 1, ts=j),
                                     ev(f"t{(t + 1) % 4}-{j}", user=f"u{(t + 1) % 4}", item=j + 1, ts=j)]))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 40 and len(results) == 80
    drain(s)
    st = s.states([f"u{t}" for t in range(4)])
    assert all(x.event_count == 10 and x.history == list(range(1, 11)) for x in st.values()) and len(st) == 4
