"""The shared store: a redis-server (several Triton replicas or machines, one learner per partition).

Layout (``<prefix>`` = "fsrec" by default):

* ``<prefix>:events:<p>``: a Stream per partition (p = int(user_key[:8], 16) % partitions); each
  consumer (the ``consumer`` argument) is a consumer group on every owned partition;
* ``<prefix>:eid:<event_id>``: the marker that makes ``append`` idempotent;
* ``<prefix>:applied:<consumer>``: a Set of the event ids the consumer applied (never twice);
* ``<prefix>:user:<user>``: a Hash (history JSON, event_count, newest_ts, params, fingerprint, fit_time);
* ``<prefix>:counts``: a Hash (events, duplicates, new_item_events).

``append`` and ``apply`` are one Lua script call per batch (:mod:`.redis_lua`), so each is atomic;
with ``appendonly yes`` a killed server replays whole scripts or none. Events delivered but not
applied before a crash stay in the group's pending list and come back from :meth:`pending`.
Every call is safe to retry (the client retries connection errors a few times).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import ConfigError, StoreError, StoreUnavailableError
from . import redis_lua
from .base import (
    DEFAULT_MAX_HISTORY,
    Event,
    Store,
    UserState,
    check_consumer,
    check_fingerprint,
    check_max_history,
    check_params,
    encode_params,
    make_state,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # a local redis-server, database 0
DEFAULT_PREFIX = "fsrec"  # namespace of every key (several deployments can share one server)
TIMEOUT_S = 5.0  # socket connect / read timeout
MEMBER = "fsrec"  # the one consumer name inside each group (a restarted learner finds its pending list)
CHUNK = 1000  # users per pipeline / per clear_params script call


def redact_url(url: str) -> str:
    """``url`` without its password (error messages and ``.url`` name the store, never its secret)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable redis url>"


class RedisStore(Store):
    """Per-user state and the event log in a redis-server (module docstring)."""

    def __init__(self, url: str = DEFAULT_REDIS_URL, max_history: int = DEFAULT_MAX_HISTORY,
                 prefix: str = DEFAULT_PREFIX, partitions: int = 1, owned_partitions: Sequence[int] | None = None):
        self.url = redact_url(url)  # where the store lives (password hidden)
        self.max_history = check_max_history(max_history)  # items kept per user
        self.prefix = prefix  # namespace of every key
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ConfigError(f"partitions must be an integer >= 1 (event streams), got {partitions!r}")
        self.partitions = partitions  # event streams; a user's events all go to one
        owned = list(range(partitions)) if owned_partitions is None else sorted(set(owned_partitions))
        if not owned or any(not isinstance(p, int) or not 0 <= p < partitions for p in owned):
            raise ConfigError(f"owned_partitions must be a non-empty subset of 0..{partitions - 1}, "
                              f"got {owned_partitions!r}")
        self.owned = owned  # partitions whose events this instance reads (pending/lag)
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                           retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
        except ValueError as e:
            raise ConfigError(f"redis store {self.url}: bad URL ({e}); use redis://host:port/db, "
                              "rediss://... or unix:///path/redis.sock") from None
        self._append = self._r.register_script(redis_lua.APPEND)
        self._apply = self._r.register_script(redis_lua.APPLY)
        self._clear = self._r.register_script(redis_lua.CLEAR_PARAMS)
        self._groups: set[tuple[int, str]] = set()  # (partition, group) known to exist
        self._turn = 0  # the partition pending() reads first (round robin: none starves)

    # -- keys ------------------------------------------------------------------------------------
    def partition(self, user: str) -> int:
        """The partition of a user key (hex keys: their first 8 hex digits; other text: crc32)."""
        try:
            h = int(user[:8], 16)
        except ValueError:
            h = zlib.crc32(user.encode("utf-8"))
        return h % self.partitions

    def _stream(self, p: int) -> str:
        return f"{self.prefix}:events:{p}"

    def _user_key(self, user: str) -> str:
        return f"{self.prefix}:user:{user}"

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailableError(f"redis store {self.url}: cannot connect ({e}); start redis-server or "
                                        "pass --store with a reachable URL") from e
        except redis.RedisError as e:
            raise StoreError(f"redis store {self.url}: {what} failed ({e}); check the server's log and that "
                             "it is redis >= 7 with nothing else under the key prefix "
                             f"{self.prefix!r}") from e

    # -- events ----------------------------------------------------------------------------------
    def append(self, events: Sequence[Event]) -> list[bool]:
        events = list(events)
        if not events:
            return []
        now = repr(time.time())
        keys, args = [f"{self.prefix}:counts"], []
        for e in events:
            keys += [f"{self.prefix}:eid:{e.event_id}", self._stream(self.partition(e.user))]
            args += [e.event_id, e.user, str(int(e.item)), e.raw_item or "", repr(float(e.ts)), now]
        with self._guard("append"):
            out = self._append(keys=keys, args=args)
        return [bool(int(x)) for x in out]

    def _ensure_group(self, p: int, group: str) -> None:
        if (p, group) in self._groups:
            return
        try:
            self._r.xgroup_create(self._stream(p), group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._groups.add((p, group))

    def _read_group(self, p: int, group: str, start: str, count: int) -> list:
        """XREADGROUP (re-creating the group once if the server lost it) -> [(id, fields)]."""
        for attempt in (0, 1):
            self._ensure_group(p, group)
            try:
                resp = self._r.xreadgroup(group, MEMBER, {self._stream(p): start}, count=count)
                break
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e) or attempt:
                    raise
                self._groups.discard((p, group))
        return [entry for _, entries in resp or [] for entry in entries]

    def pending(self, consumer: str, limit: int = 1000) -> list[tuple[str, Event]]:
        check_consumer(consumer)
        out: list[tuple[str, Event]] = []
        order = self.owned[self._turn % len(self.owned):] + self.owned[:self._turn % len(self.owned)]
        self._turn += 1
        with self._guard("read pending events"):
            for p in order:
                # first what was delivered before and never applied (a crash), then new events
                for start in ("0", ">"):
                    room = int(limit) - len(out)
                    if room <= 0:
                        return out
                    for sid, fields in self._read_group(p, consumer, start, room):
                        sid = sid.decode() if isinstance(sid, bytes) else sid
                        if not fields:  # deleted from the stream after delivery: nothing to apply
                            self._r.xack(self._stream(p), consumer, sid)
                            continue
                        out.append((f"{p}:{sid}", _event(fields)))
        return out

    def apply(self, consumer: str, batch: Sequence[tuple[str, Event]]) -> set[str]:
        check_consumer(consumer)
        keys, args = [f"{self.prefix}:applied:{consumer}"], [consumer, str(self.max_history)]
        for token, e in batch:
            p, sid = self._parse_token(token)
            keys += [self._user_key(e.user), self._stream(p)]
            args += [sid, e.event_id, e.user, str(int(e.item)), repr(float(e.ts))]
        if len(keys) == 1:
            return set()
        with self._guard("apply"):
            changed = self._apply(keys=keys, args=args)
        return {u.decode() if isinstance(u, bytes) else u for u in changed}

    def _parse_token(self, token: str) -> tuple[int, str]:
        p, _, sid = str(token).partition(":")
        if not p.isdigit() or int(p) >= self.partitions or not sid:
            raise StoreError(f"redis store {self.url}: apply got the position {token!r}, not one from pending(); "
                             "pass the (token, event) pairs pending() returned")
        return int(p), sid

    def lag(self, consumer: str) -> tuple[int, float]:
        check_consumer(consumer)
        total, oldest = 0, 0.0
        with self._guard("lag"):
            for p in self.owned:
                n, first = self._partition_lag(p, consumer)
                total += n
                if first and (not oldest or first < oldest):
                    oldest = first
        return total, oldest

    def _partition_lag(self, p: int, group: str) -> tuple[int, float]:
        """(pending + undelivered events of one partition, received time of the oldest of them)."""
        stream = self._stream(p)
        info = next((g for g in self._groups_info(stream) if _s(g.get("name")) == group), None)
        if info is None:  # the group does not exist yet: every event is pending
            n = int(self._r.xlen(stream))
            first = self._r.xrange(stream, "-", "+", count=1)
            return n, _received(first)
        last = _s(info.get("last-delivered-id")) or "0-0"
        undelivered = info.get("lag")
        if undelivered is None:  # redis cannot tell (entries were deleted): count them
            undelivered = len(self._r.xrange(stream, f"({last}", "+"))
        times = []
        if int(info.get("pending") or 0):
            summary = self._r.xpending(stream, group)
            times.append(_received(self._r.xrange(stream, summary["min"], "+", count=1)))
        if int(undelivered):
            times.append(_received(self._r.xrange(stream, f"({last}", "+", count=1)))
        times = [t for t in times if t]
        return int(info.get("pending") or 0) + int(undelivered), min(times) if times else 0.0

    def _groups_info(self, stream: str) -> list[dict]:
        try:
            return self._r.xinfo_groups(stream)
        except redis.ResponseError as e:
            if "no such key" in str(e).lower():
                return []
            raise

    # -- state -----------------------------------------------------------------------------------
    def states(self, users: Sequence[str]) -> dict[str, UserState]:
        users = list(dict.fromkeys(users))
        out: dict[str, UserState] = {}
        with self._guard("read states"):
            for i in range(0, len(users), CHUNK):
                part = users[i:i + CHUNK]
                pipe = self._r.pipeline(transaction=False)
                for u in part:
                    pipe.hgetall(self._user_key(u))
                for u, h in zip(part, pipe.execute()):
                    if h:
                        out[u] = _state(u, h)
        return out

    def put_params(self, params: dict[str, np.ndarray], fingerprint: str, fit_time: float) -> None:
        check_fingerprint(fingerprint)
        rows = [(u, encode_params(check_params(u, a))) for u, a in params.items()]  # check all first
        with self._guard("write parameters"):
            for i in range(0, len(rows), CHUNK):
                pipe = self._r.pipeline(transaction=True)
                for u, blob in rows[i:i + CHUNK]:  # one HSET per user: params and fingerprint together
                    pipe.hset(self._user_key(u), mapping={"params": blob, "fingerprint": fingerprint,
                                                          "fit_time": repr(float(fit_time))})
                pipe.execute()

    def clear_params(self, fingerprint_not: str) -> int:
        keys = [self._user_key(u) for u in self.users()]
        n = 0
        with self._guard("clear parameters"):
            for i in range(0, len(keys), CHUNK):
                n += int(self._clear(keys=keys[i:i + CHUNK], args=[fingerprint_not]))
        return n

    def users(self) -> list[str]:
        head = f"{self.prefix}:user:"
        with self._guard("list users"):
            found = {_s(k)[len(head):] for k in self._r.scan_iter(match=f"{head}*", count=1000)}
        return sorted(found)

    # -- housekeeping ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._guard("read counts"):
            raw = self._r.hgetall(f"{self.prefix}:counts")
        out = {"events": 0, "duplicates": 0, "new_item_events": 0}
        out.update({_s(k): int(v) for k, v in raw.items()})
        out["users"] = len(self.users())
        return out

    def ping(self) -> None:
        with self._guard("ping"):
            self._r.ping()

    def close(self) -> None:
        try:
            self._r.close()
        except redis.RedisError:
            pass

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r}, partitions={self.partitions})"


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else ("" if v is None else str(v))


def _event(fields: dict) -> Event:
    f = {_s(k): _s(v) for k, v in fields.items()}
    return Event(event_id=f["event_id"], user=f["user"], item=int(f["item"]), ts=float(f["ts"]),
                 raw_item=f.get("raw_item", ""))


def _received(entries: list) -> float:
    if not entries or not entries[0][1]:
        return 0.0
    return float(_s(entries[0][1].get(b"received", b"0")))


def _state(user: str, h: dict) -> UserState:
    g = {_s(k): v for k, v in h.items()}
    return make_state(user, json.loads(_s(g.get("history")) or "[]"), g.get("params"), _s(g.get("fingerprint")),
                      float(_s(g.get("fit_time")) or 0), int(_s(g.get("event_count")) or 0),
                      float(_s(g.get("newest_ts")) or 0))
