"""The online learner: events -> histories -> per-user parameters, and periodic re-fine-tuning.

``Learner(config).run()`` (``fsrec learn``) loops:

1. **apply**: up to ``batch_events`` pending events of its consumer group go into the users'
   histories in one atomic store call (a crash before it re-delivers them; after it, they are
   marked applied: none lost, none applied twice);
2. **fit**: at most every ``fit_interval_s``, every user touched since the last fit gets new
   parameters in ONE vectorized fit (``adaptation.online.refit_user_params``) on their newest
   ``window`` items, written with the served model's fingerprint (parameters and fingerprint in
   one write per user: a reader never sees half of them);
3. **re-fine-tune** (every ``refine_every_events`` events or ``refine_every_s`` seconds): a copy
   of the served model is fine-tuned on the recently active users' histories with replay
   (``adaptation.online.refine_model``: refused unless it is not worse on their newest events and
   forgets < 2 % on old users), exported, and rolled out through ``operations.rollout`` (candidate
   load, smoke check, swap). Then the learner fits for the new fingerprint: until the active
   users are refit, the serving lookup sends them no parameters (never stale ones).

A store that is down is retried with exponential backoff (``max_backoff_s``); nothing is lost,
because nothing is acknowledged until it is applied.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..adaptation.online import RefineResult, refine_model, refit_user_params
from ..adaptation.peruser import StateCache
from ..data.splits import UserSequence
from ..errors import LearnerError, StoreUnavailableError
from ..model import FsRecModel, model_fingerprint
from ..store import Store, open_store
from .config import LearnerConfig
from .metrics import LearnerMetrics

log = logging.getLogger(__name__)


@dataclass
class LearnerStats:
    """What the learner did since it started."""

    events: int = 0  # events applied
    fits: int = 0  # vectorized fits run
    users_refit: int = 0  # user parameters written
    refines: list = field(default_factory=list)  # one dict per re-fine-tune (outcome, guard numbers)
    store_errors: int = 0  # store calls that failed and were retried
    fit_cpu_seconds: float = 0.0  # CPU seconds spent in per-user fits
    refine_cpu_seconds: float = 0.0  # CPU seconds spent re-fine-tuning (fit + guards + export)


class Learner:
    """One learner process (module docstring). ``publish(model) -> version`` replaces the rollout
    to Triton (tests, the replay); by default it is :func:`.publish.publish_model` when the config
    names a server, else re-fine-tuned models are refused for lack of a place to serve them."""

    def __init__(self, config: LearnerConfig, store: Store | None = None,
                 publish: Callable[[FsRecModel], str] | None = None):
        self.cfg = config
        self.store = store if store is not None else open_store(
            config.store, partitions=config.partitions,
            owned_partitions=None if config.partition is None else [config.partition])
        self.model = FsRecModel.from_pretrained(str(config.model_dir)).eval()
        self.fingerprint = model_fingerprint(self.model)
        self.metrics = LearnerMetrics()
        self.metrics.set_model(self.fingerprint)
        self.metrics_port: int | None = None
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.metrics_port, config.metrics_host)
        self._publish = publish
        self.stats = LearnerStats()
        self.state_cache = StateCache()  # prefix states of the served model, reused across refits
        self.touched: set = set()  # users with events since the last fit
        self.active: set = set()  # users with events since the last re-fine-tune
        self._events_since_refine = 0
        self._last_fit = 0.0
        self._last_refine = time.monotonic()

    # -- one pass --------------------------------------------------------------------------------
    def apply_pending(self) -> int:
        """Apply one batch of pending events; returns how many events the batch held."""
        batch = self.store.pending(self.cfg.group, self.cfg.batch_events)
        if batch:
            users = self.store.apply(self.cfg.group, batch)
            self.touched |= users
            self.active |= users
            self.stats.events += len(batch)
            self._events_since_refine += len(batch)
            self.metrics.events.inc(len(batch))
        n, oldest = self.store.lag(self.cfg.group)
        self.metrics.pending.set(n)
        self.metrics.lag.set(max(0.0, time.time() - oldest) if n and oldest else 0.0)
        return len(batch)

    def fit_touched(self, users: set | None = None) -> int:
        """Refit the parameters of ``users`` (default: those touched since the last fit) in one
        vectorized fit and write them with the current fingerprint; returns users written."""
        users = set(self.touched if users is None else users)
        if not users:
            return 0
        states = self.store.states(sorted(users))
        histories = {u: s.history for u, s in states.items() if s.history}
        if histories:
            t0 = time.perf_counter()
            params, info = refit_user_params(self.model, histories, window=self.cfg.window, config=self.cfg.per_user,
                                             cache=self.state_cache, context=self.cfg.context)
            self.store.put_params(params, self.fingerprint, time.time())
            self.metrics.fit_seconds.observe(time.perf_counter() - t0)
            self.metrics.users_refit.inc(len(params))
            self.stats.fits += 1
            self.stats.users_refit += len(params)
            self.stats.fit_cpu_seconds += float(info.get("cpu_seconds", 0.0))
        self.touched -= users
        self._last_fit = time.monotonic()
        return len(histories)

    def refine_due(self) -> bool:
        c = self.cfg
        by_events = c.refine_every_events and self._events_since_refine >= c.refine_every_events
        by_time = c.refine_every_s and time.monotonic() - self._last_refine >= c.refine_every_s
        return bool(by_events or by_time) and len(self.active) >= c.min_refine_users

    def refine(self) -> RefineResult | None:
        """Re-fine-tune on the active users with replay, roll the candidate out if it passes the
        guards, then refit the active users for the new fingerprint. Returns the guard result."""
        c0 = time.process_time()
        active = sorted(self.active)
        states = self.store.states(active)
        recent = [UserSequence(u, s.history, [1.0] * len(s.history)) for u, s in states.items() if len(s.history) >= 2]
        others = [u for u in self.store.users() if u not in self.active]
        rng = random.Random(self.cfg.refine.seed + len(self.stats.refines))
        sample = rng.sample(others, min(len(others), self.cfg.replay_users))
        replay = [UserSequence(u, s.history, [1.0] * len(s.history)) for u, s in self.store.states(sample).items()
                  if len(s.history) >= 2]
        res = refine_model(self.model, recent, replay, self.cfg.refine)
        entry = {"time": time.time(), "accepted": res.accepted, "reason": res.reason, "served_ndcg": res.served_ndcg,
                 "new_ndcg": res.new_ndcg, "forgetting": res.forgetting, "n_recent": res.n_recent}
        outcome = "refused"
        if res.accepted:
            try:
                entry["version"] = self.publish(res.model)
                outcome = "rolled-out"
                self.model, self.fingerprint = res.model.eval(), model_fingerprint(res.model)
                self.metrics.set_model(self.fingerprint)
                self.fit_touched(set(active))  # the active users' parameters for the new model
            except Exception as e:  # noqa: BLE001 - a failed rollout keeps the served model
                outcome, entry["error"] = "failed", f"{type(e).__name__}: {e}"
                log.warning("re-fine-tuned model not rolled out: %s", entry["error"])
        entry["outcome"] = outcome
        self.metrics.refines.labels(outcome).inc()
        self.stats.refines.append(entry)
        self.stats.refine_cpu_seconds += time.process_time() - c0
        self.active, self._events_since_refine, self._last_refine = set(), 0, time.monotonic()
        log.info("re-fine-tune %s: %s", outcome, res.reason)
        return res

    def publish(self, model: FsRecModel) -> str:
        if self._publish is not None:
            return str(self._publish(model))
        if self.cfg.server_url is None:
            raise LearnerError("no server to roll the re-fine-tuned model out to: start `fsrec learn` with "
                               "--server and --repository (the folder tritonserver reads)")
        from .publish import publish_model

        return publish_model(model, self.cfg)

    def step(self) -> int:
        """Apply one batch, fit if due, re-fine-tune if due; returns events applied."""
        n = self.apply_pending()
        if self.touched and time.monotonic() - self._last_fit >= self.cfg.fit_interval_s:
            self.fit_touched()
        if self.refine_due():
            self.refine()
        return n

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None,
            until_idle: bool = False) -> LearnerStats:
        """Loop until ``stop`` is set, ``max_seconds`` pass, or (``until_idle``) nothing is pending
        and every touched user is fitted. Store outages are retried with backoff."""
        stop = stop or threading.Event()
        t_end = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = self.cfg.poll_s
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            try:
                n = self.step()
                backoff = self.cfg.poll_s
            except StoreUnavailableError as e:
                self.stats.store_errors += 1
                self.metrics.store_errors.inc()
                log.warning("%s; retrying in %.1f s", e, backoff)
                stop.wait(backoff)
                backoff = min(self.cfg.max_backoff_s, backoff * 2)
                continue
            if n == 0:
                if until_idle and not self.touched:
                    break
                stop.wait(self.cfg.poll_s)
        return self.stats

    def close(self) -> None:
        self.store.close()


def save_served_model(model: FsRecModel, directory: str | Path) -> str:
    """Save the model a learner starts from (``LearnerConfig.model_dir``); returns its fingerprint."""
    model.save_pretrained(str(directory))
    return model_fingerprint(model)
