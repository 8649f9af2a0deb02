"""The prequential replay: a method never sees the event it is scored on, the stale method's
histories stay frozen, exclusions, the params tick and the loop's model switch."""

from __future__ import annotations

import numpy as np
import torch

from fsrec_serve.experiments import replay as R
from fsrec_serve.experiments.arrivals import Event, Timeline

N_ITEMS = 12


def _timeline() -> Timeline:
    """Users a, b have events before T = 100; c and d arrive after it (new users)."""
    ev = {
        "a": [Event(1, 5.0, 10), Event(2, 4.0, 20), Event(3, 3.0, 150), Event(4, 3.0, 400)],
        "b": [Event(5, 5.0, 30), Event(6, 4.0, 120)],
        "c": [Event(7, 4.0, 110), Event(8, 4.0, 130), Event(9, 4.0, 300)],
        "d": [Event(2, 4.0, 200)],
    }
    return Timeline("toy", list(range(N_ITEMS)), None, [], ev, 100)


class FakeModel:
    """Scores item i by i (highest index first) and remembers every history it was given."""

    class config:  # noqa: N801 (mimics FsRecConfig attributes)
        max_seq_len = 8
        hidden_size = 4

    def __init__(self):
        self.seen_inputs: list[list[int]] = []

    def eval(self):
        return self

    def next_item_scores(self, x, user_params=None):
        self.seen_inputs.append([int(i) for i in x[0] if int(i) != 0])
        return torch.arange(N_ITEMS + 1, dtype=torch.float32)[None]


class Cheat:
    """Recommends the item of the newest RECORDED event: perfect if the replay leaked."""

    def __init__(self):
        self.last = None

    def recommend(self, user, now):
        return [] if self.last is None else [self.last]

    def record(self, e):
        self.last = e.item


def test_split_at_orders_events_and_separates_new_users():
    pre, events = R.split_at(_timeline())
    assert set(pre) == {"a", "b"}
    assert [e.time for e in events] == sorted(e.time for e in events) and len(events) == 7
    new = [e.user not in pre for e in events]
    assert sum(new) == 4 and len(events) - sum(new) == 3  # new: c x3, d x1; returning: a x2, b x1
    assert R.split_at(_timeline(), max_events=2)[1] == events[:2]


def test_a_method_never_sees_the_event_it_is_scored_on():
    _, events = R.split_at(_timeline())
    ranks = R.run_replay(Cheat(), events, top_k=10)
    # the cheat only hits when the previous event's item repeats (never here): all misses
    assert (ranks == 10).all()


def test_stale_histories_are_frozen_and_exclusions_hold():
    tl = _timeline()
    pre, events = R.split_at(tl)
    model = FakeModel()
    rec = R.make_recommender("stale", model, pre, tl, R.ReplayConfig())
    for e in events:
        top = rec.recommend(e.user, e.time)
        earlier = set(rec.items(e.user))
        assert not earlier & set(top)  # the user's earlier items (pre- and post-T) are excluded
        assert all(rec.seen[i] for i in top)  # only items already in the log
        rec.record(e)
    assert all(h in ([1, 2], [5]) for h in model.seen_inputs)  # pre-T histories only, cached
    grow = R.make_recommender("history", FakeModel(), pre, tl, R.ReplayConfig())
    R.run_replay(grow, events)
    assert [1, 2, 3] in grow.model.seen_inputs  # a's history grew


def test_params_are_refit_at_ticks_and_the_loop_switch_drops_old_params(monkeypatch):
    calls = []

    def fake_refit(model, hist, window=20, config=None):
        calls.append(sorted(hist))
        return {u: np.full(4, 1.0, dtype=np.float32) for u in hist}, {"n_adapted": len(hist)}

    monkeypatch.setattr(R, "refit_user_params", fake_refit)
    tl = _timeline()
    pre, events = R.split_at(tl)
    rec = R.make_recommender("history+params", FakeModel(), pre, tl, R.ReplayConfig(tick_s=100))
    R.run_replay(rec, events)
    assert calls == [["a", "b", "c"], ["d"], ["c"]]  # dirty users at ticks 200, 300, 400
    assert set(rec.params) == {"a", "b", "c", "d"}

    class Accepted:
        accepted, reason, served_ndcg, new_ndcg, forgetting = True, "ok", 0.1, 0.2, 1.0
        n_recent, cpu_seconds, fingerprint = 1, 0.5, "f"
        model = FakeModel()

    monkeypatch.setattr(R, "refine_model", lambda model, recent, replay, cfg: Accepted())
    calls.clear()
    loop = R.make_recommender("loop", FakeModel(), pre, tl, R.ReplayConfig(tick_s=1000, cadence_s=150))
    R.run_replay(loop, events)
    refines = loop.info["refines"]
    assert [r["at"] for r in refines] == [250, 400]
    # at 250 the users active since T get params for the new model; at 400 only c was active
    # since, so every other user's old params were dropped (zeros until their next tick)
    assert calls == [["a", "b", "c", "d"], ["c"]]
    assert set(loop.params) == {"c"}
    assert loop.learn_cpu >= 1.0
