"""Prequential replay of the live loop: before each event, recommend; then record the event.

Protocol (ML-100K, real timestamps; ``bench/replay.py`` runs it)
    * ``T`` = the ``quantile`` (0.8) of all event times; the model of ``T`` is pretrained with the
      library's default causal recipe on the events before ``T`` only (``pretrain_before``).
    * Every event at or after ``T`` is replayed in time order (ties: user, then the user's own
      order). Before the event the method gives the user's top-``top_k`` over the catalogue SO FAR
      (items with an event before it), the user's earlier items (pre- and post-``T``) excluded;
      the event's item scores rank = its position, a miss when absent (``evaluation.metrics``).
      Then the event is recorded. The clock is the event time: a learning step due at time ``b``
      (a tick, a refine, a retrain) runs when the first event at or after ``b`` arrives, on the
      events recorded so far, i.e. strictly before that event.
    * A method is a :class:`Recommender` (``recommend(user, now) -> items``, ``record(event)``):
      the in-process ones here, or the Triton + store + learner stack behind the same two calls.

Methods (``make_recommender``)
    stale              model of T, histories frozen at T; a user without history: popularity at T
    recent-popularity  most popular items of the last ``popularity_days`` days
    history            model of T, history grows (in-context only)
    history+params     + per-user params (``refit_user_params``) of the users with new events,
                       refitted at every ``tick_s`` boundary of event time
    loop               + ``refine_model`` every ``cadence_s`` on the users active since the last
                       refine (their full sequences; replay: the pre-T sequences); on acceptance
                       the model is switched, every user's params are dropped and the active
                       users' refitted for the new model (others get zeros until their next tick)
    retrain            from-scratch pretraining on every recorded event every ``cadence_s``;
                       history grows; no params
A model method meets a user without any history with the popularity of everything recorded so far.
``learn_cpu`` counts the learning CPU-seconds (fits, refines, retrains), never the scoring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from ..adaptation.online import RefineConfig, refine_model, refit_user_params
from ..data.splits import UserSequence
from .arrivals import Event, Timeline, splits_before, train_valid_before

METHODS = ("stale", "recent-popularity", "history", "history+params", "loop", "retrain")


@dataclass
class ReplayConfig:
    quantile: float = 0.8  # T = this quantile of all event times
    tick_s: int = 60  # per-user params: refit the users with new events every tick (event time)
    cadence_s: int = 7 * 86400  # loop refine / retrain every this many event-time seconds
    window: int = 20  # newest items per user the params are fitted on
    popularity_days: float = 7.0  # recent-popularity: window of the counts
    top_k: int = 10  # recommendations per event
    max_events: Optional[int] = None  # replay only the first n events after T (smoke runs)
    retrain_seconds: Optional[float] = 240.0  # wall-clock cap of each retrain's pretraining
    refine: RefineConfig = field(default_factory=RefineConfig)  # loop's refine step (library default)
    seed: int = 0  # pretraining / refine seed


@dataclass(frozen=True)
class ReplayEvent:
    user: str  # user id
    item: int  # item index (the log's IdMap)
    rating: float  # explicit rating
    time: int  # unix event time


class Recommender(Protocol):
    """What the replay drives: an in-process method here, the live stack in production."""

    def recommend(self, user: str, now: int) -> list[int]: ...  # top-k item indices before the event
    def record(self, event: ReplayEvent) -> None: ...  # the event happened


def split_at(tl: Timeline, max_events: Optional[int] = None):
    """(pre-T events per user, events at or after T in replay order)."""
    pre, post = {}, []
    for u, ev in tl.events.items():
        pre[u] = [e for e in ev if e.time < tl.T]
        post += [(e.time, u, j, e) for j, e in enumerate(ev) if e.time >= tl.T]
    post.sort(key=lambda x: (x[0], x[1], x[2]))
    events = [ReplayEvent(u, e.item, e.rating, e.time) for _, u, _, e in post]
    return {u: ev for u, ev in pre.items() if ev}, events[:max_events] if max_events else events


class _Log:
    """What a method has recorded: events per user, the catalogue so far, popularity counts."""

    def __init__(self, pre: dict, n_items: int, top_k: int):
        self.events = {u: list(ev) for u, ev in pre.items()}
        self.seen = np.zeros(n_items + 1, dtype=bool)
        self.counts = np.zeros(n_items + 1, dtype=np.float64)
        for ev in pre.values():
            for e in ev:
                self.seen[e.item] = True
                self.counts[e.item] += 1
        self.top_k, self.learn_cpu, self.info = top_k, 0.0, {}

    def items(self, user: str) -> list[int]:
        return [e.item for e in self.events.get(user, [])]

    def record(self, event: ReplayEvent) -> None:
        self.events.setdefault(event.user, []).append(Event(event.item, event.rating, event.time))
        self.seen[event.item] = True
        self.counts[event.item] += 1
        self.on_record(event)

    def on_record(self, event: ReplayEvent) -> None:
        pass

    def top(self, scores: np.ndarray, user: str) -> list[int]:
        """Top-k of ``scores`` [N+1] among the catalogue so far, the user's items excluded."""
        s = np.where(self.seen, np.asarray(scores, dtype=np.float64), -np.inf)
        s[0] = -np.inf
        s[self.items(user)] = -np.inf
        k = min(self.top_k, int(np.isfinite(s).sum()))
        if k <= 0:
            return []
        idx = np.argpartition(-s, k - 1)[:k]
        return [int(i) for i in idx[np.lexsort((idx, -s[idx]))]]  # best first, lower index on ties


class RecentPopularity(_Log):
    def __init__(self, pre: dict, n_items: int, top_k: int, days: float):
        super().__init__(pre, n_items, top_k)
        self.window = days * 86400
        self.recent = np.zeros(n_items + 1)
        self.queue = sorted(((e.time, e.item) for ev in pre.values() for e in ev))
        self.head = 0
        for _, i in self.queue:
            self.recent[i] += 1

    def on_record(self, event: ReplayEvent) -> None:
        self.queue.append((event.time, event.item))
        self.recent[event.item] += 1

    def recommend(self, user: str, now: int) -> list[int]:
        while self.head < len(self.queue) and self.queue[self.head][0] < now - self.window:
            self.recent[self.queue[self.head][1]] -= 1
            self.head += 1
        return self.top(self.recent, user)


class ModelRecommender(_Log):
    """A model over the user's history; optional frozen histories (stale) and per-user params."""

    def __init__(self, model, pre: dict, n_items: int, cfg: ReplayConfig, grow: bool = True,
                 params: bool = False):
        super().__init__(pre, n_items, cfg.top_k)
        self.model, self.cfg, self.grow, self.use_params = model.eval(), cfg, grow, params
        self.frozen = {u: [e.item for e in ev] for u, ev in pre.items()}
        self.pop_at_T = self.counts.copy()
        self.params: dict = {}
        self.dirty: set = set()
        self.next_tick = None
        self.cache: dict = {}
        self.info = {"fits": 0, "fit_users": 0, "fit_adapted": 0}

    def on_record(self, event: ReplayEvent) -> None:
        self.dirty.add(event.user)

    def fit(self, users) -> None:
        """Refit the params of ``users`` on their recorded items (learning CPU counted)."""
        users = sorted(users)
        if not users:
            return
        c0 = time.process_time()
        hist = {u: self.items(u) for u in users}
        params, info = refit_user_params(self.model, hist, self.cfg.window)
        self.params.update(params)
        self.learn_cpu += time.process_time() - c0
        self.info["fits"] += 1
        self.info["fit_users"] += len(users)
        self.info["fit_adapted"] += int(info.get("n_adapted", 0))

    def advance(self, now: int) -> None:
        if not self.use_params:
            return
        tick = self.cfg.tick_s
        if self.next_tick is None:
            self.next_tick = (now // tick + 1) * tick
        if now >= self.next_tick:
            self.fit(self.dirty)
            self.dirty = set()
            self.next_tick = (now // tick + 1) * tick

    @torch.no_grad()
    def scores(self, user: str) -> np.ndarray:
        h = self.items(user) if self.grow else self.frozen.get(user, [])
        if not h:
            return self.pop_at_T if not self.grow else self.counts
        if not self.grow and user in self.cache:
            return self.cache[user]
        L = int(self.model.config.max_seq_len)
        x = torch.as_tensor([h[-L:]], dtype=torch.long)
        p = self.params.get(user)
        up = None if p is None or not p.any() else torch.as_tensor(p, dtype=torch.float32)[None]
        s = self.model.next_item_scores(x, user_params=up)[0].float().numpy()
        if not self.grow:
            self.cache[user] = s
        return s

    def recommend(self, user: str, now: int) -> list[int]:
        self.advance(now)
        return self.top(self.scores(user), user)


class Loop(ModelRecommender):
    """history + params + a guarded refine every cadence (module docstring)."""

    def __init__(self, model, pre: dict, n_items: int, cfg: ReplayConfig, T: int):
        super().__init__(model, pre, n_items, cfg, grow=True, params=True)
        self.next_refine, self.active = T + cfg.cadence_s, set()
        self.replay = [UserSequence(u, [e.item for e in ev], [e.rating for e in ev])
                       for u, ev in sorted(pre.items()) if len(ev) >= 2]
        self.info["refines"] = []

    def on_record(self, event: ReplayEvent) -> None:
        self.dirty.add(event.user)
        self.active.add(event.user)

    def advance(self, now: int) -> None:
        while now >= self.next_refine:
            self.refine(self.next_refine)
            self.next_refine += self.cfg.cadence_s
        super().advance(now)

    def refine(self, at: int) -> None:
        recent = [UserSequence(u, self.items(u), [e.rating for e in self.events[u]])
                  for u in sorted(self.active)]
        res = refine_model(self.model, recent, self.replay, self.cfg.refine)
        self.learn_cpu += res.cpu_seconds
        rec = {"at": at, "accepted": res.accepted, "reason": res.reason, "served_ndcg": res.served_ndcg,
               "new_ndcg": res.new_ndcg, "forgetting": res.forgetting, "n_recent": res.n_recent,
               "cpu_seconds": res.cpu_seconds, "fingerprint": res.fingerprint}
        if res.accepted:
            self.model, self.params = res.model.eval(), {}
            self.fit(self.active)  # the active users' params for the new fingerprint
        self.info["refines"].append(rec)
        self.active = set()


class Retrain(ModelRecommender):
    """Fresh pretraining on every recorded event every cadence; history grows; no params."""

    def __init__(self, model, pre: dict, tl: Timeline, cfg: ReplayConfig, pretrain_fn: Callable):
        super().__init__(model, pre, len(tl.item_map), cfg, grow=True, params=False)
        self.tl, self.pretrain_fn = tl, pretrain_fn
        self.next_retrain = tl.T + cfg.cadence_s
        self.info["retrains"] = []

    def advance(self, now: int) -> None:
        while now >= self.next_retrain:
            b = self.next_retrain
            view = Timeline(self.tl.name, self.tl.item_map, self.tl.item_features, self.tl.feature_names,
                            self.events, b)
            c0 = time.process_time()
            self.model, info = self.pretrain_fn(view, b, self.cfg.retrain_seconds)
            cpu = time.process_time() - c0
            self.learn_cpu += cpu
            self.info["retrains"].append({"at": b, "cpu_seconds": cpu, **info})
            self.next_retrain += self.cfg.cadence_s


def pretrain_before(tl: Timeline, t: int, max_train_seconds: Optional[float], seed: int = 0,
                    min_train_len: int = 3):
    """(model, info): the library's default causal recipe on the events before ``t`` (each user's
    last event before ``t`` early-stops it), capped at ``max_train_seconds`` of wall-clock."""
    from ..training import default_model_config, default_train_config, pretrain

    splits = splits_before(tl, t)
    train, valid = train_valid_before(tl, t, min_train_len)
    mc = default_model_config(splits, "causal")
    tc = default_train_config(splits, "causal", seed=seed, device="cpu", progress=False,
                              max_train_seconds=max_train_seconds, output_dir=None)
    w0 = time.perf_counter()
    res = pretrain(splits, mc, tc, train_sequences=train, valid_examples=valid)
    info = {"best_epoch": res.best_epoch, "epochs_run": len(res.history), "stopped_early": res.stopped_early,
            "valid_ndcg@10": res.best_valid.get("ndcg@10"), "seconds": time.perf_counter() - w0,
            "train_events": int(sum(len(s) for s in train))}
    return res.model.eval(), info


def make_recommender(method: str, model, pre: dict, tl: Timeline, cfg: ReplayConfig,
                     pretrain_fn: Callable = pretrain_before):
    """The in-process implementation of ``method`` (one of METHODS), starting from the log before T."""
    n = len(tl.item_map)
    if method == "stale":
        return ModelRecommender(model, pre, n, cfg, grow=False)
    if method == "recent-popularity":
        return RecentPopularity(pre, n, cfg.top_k, cfg.popularity_days)
    if method == "history":
        return ModelRecommender(model, pre, n, cfg)
    if method == "history+params":
        return ModelRecommender(model, pre, n, cfg, params=True)
    if method == "loop":
        return Loop(model, pre, n, cfg, tl.T)
    if method == "retrain":
        return Retrain(model, pre, tl, cfg, lambda view, b, cap: pretrain_fn(view, b, cap, cfg.seed))
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def run_replay(rec: Recommender, events: list, top_k: int = 10,
               log: Optional[Callable[[str], None]] = None, every: int = 2000) -> np.ndarray:
    """[E] 0-based ranks of each event's item in the top-k given BEFORE it was recorded (a miss =
    ``top_k``); feed to ``evaluation.metrics.ndcg_at_k`` / ``hit_at_k``."""
    ranks = np.full(len(events), top_k, dtype=np.int64)
    t0 = time.perf_counter()
    for j, e in enumerate(events):
        top = rec.recommend(e.user, e.time)[:top_k]
        if e.item in top:
            ranks[j] = top.index(e.item)
        rec.record(e)
        if log and (j + 1) % every == 0:
            log(f"  {j + 1}/{len(events)} events, {time.perf_counter() - t0:.0f}s")
    return ranks
