"""The per-user state store and its event log: one interface, two backends.

Backends: :mod:`.sqlite` (embedded default, a WAL-mode file) and :mod:`.redis` (several Triton
replicas or machines: a Stream with consumer groups for events, hashes for state). A Kafka
backend would implement the same four event methods (``append`` = produce with the event id as
key, ``pending``/``apply`` = consume + commit offsets with the applied-marker check).

The store never sees a raw user id: ``Event.user`` and every ``users`` argument are keyed hashes
(:class:`fsrec_serve.store.keys.UserKeyer`).

Guarantees every backend gives (tested against a real SQLite file and a real redis-server):

* ``append`` is idempotent by ``event_id``: the same id twice is stored once;
* ``apply`` is atomic: the histories, the event counts and the consumer's position move together
  or not at all, so a crash at any moment loses no event and applies none twice;
* ``put_params`` writes a user's parameters and their model fingerprint in one write, so a reader
  never sees parameters with another model's fingerprint (half-written parameters are never read).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InvalidEventError

DEFAULT_MAX_HISTORY = 200  # items kept per user (the served model's max_seq_len or more)
MAX_EVENT_ID_BYTES = 128  # longest event id accepted


@dataclass(frozen=True)
class Event:
    """One interaction, as stored (the user already hashed)."""

    event_id: str  # unique id; the same id twice is stored once
    user: str  # keyed hash of the user id (UserKeyer.key), never the raw id
    item: int  # item index in the served model's item map; 0 = an item the model does not know
    ts: float  # event time, seconds since the epoch (histories are kept in this order)
    raw_item: str = ""  # the raw item id (kept so that new-item events can be counted and reused)

    def __post_init__(self) -> None:
        if not self.event_id or len(self.event_id.encode("utf-8", "replace")) > MAX_EVENT_ID_BYTES:
            raise InvalidEventError(f"event_id must be 1..{MAX_EVENT_ID_BYTES} bytes, got {self.event_id!r:.60}; "
                                    "leave it out and the client makes one")
        if not self.user:
            raise InvalidEventError("event without a user key: hash the user id with UserKeyer.key first")
        if not isinstance(self.ts, (int, float)) or not math.isfinite(self.ts):
            raise InvalidEventError(f"event {self.event_id!r}: timestamp must be a finite number of seconds, got {self.ts!r}")
        if int(self.item) < 0:
            raise InvalidEventError(f"event {self.event_id!r}: item index must be >= 0 (0 = unknown item), got {self.item}")


@dataclass
class UserState:
    """What the store knows about one user."""

    user: str  # keyed hash of the user id
    history: list = field(default_factory=list)  # newest max_history known item indices, oldest first
    params: np.ndarray | None = None  # [H] float32 per-user parameters; None = none fitted
    fingerprint: str = ""  # fingerprint of the model ``params`` were fitted on ("" = none)
    fit_time: float = 0.0  # when ``params`` were written (epoch seconds; 0 = never)
    event_count: int = 0  # events applied for this user (known and unknown items)
    newest_ts: float = 0.0  # time of the newest applied event
    times: list = field(default_factory=list)  # event time of each ``history`` item (same order)

    def params_for(self, fingerprint: str) -> np.ndarray | None:
        """The parameters if they were fitted on the model ``fingerprint``, else None (never stale)."""
        if self.params is None or not fingerprint or self.fingerprint != fingerprint:
            return None
        return self.params


def insert_in_time_order(history: list, item: int, ts: float, max_history: int) -> list:
    """``history`` = [[item, ts], ...] oldest first -> with (item, ts) inserted after every entry
    of time <= ts (a late event goes where it happened), cut to the newest ``max_history``."""
    pos = len(history)
    while pos > 0 and history[pos - 1][1] > ts:
        pos -= 1
    history.insert(pos, [int(item), float(ts)])
    return history[-max_history:] if max_history > 0 else []  # [-0:] would keep everything


class Store(ABC):
    """Events in, per-user state out (module docstring). Implementations are thread-safe."""

    url: str  # where the store lives (sqlite:///path, redis://host:port/db): error messages name it
    max_history: int = DEFAULT_MAX_HISTORY

    # -- events --------------------------------------------------------------------------------
    @abstractmethod
    def append(self, events: Sequence[Event]) -> list[bool]:
        """Store ``events`` (one atomic write); per event True = new, False = duplicate id."""

    @abstractmethod
    def pending(self, consumer: str, limit: int = 1000) -> list[tuple[str, Event]]:
        """Up to ``limit`` stored events the consumer group ``consumer`` has not applied yet, in
        arrival order, each with an opaque position token (handed back to :meth:`apply`)."""

    @abstractmethod
    def apply(self, consumer: str, batch: Sequence[tuple[str, Event]]) -> set[str]:
        """Apply ``batch`` (from :meth:`pending`) to the users' histories in timestamp order and
        advance ``consumer`` past it, atomically; events this consumer already applied are skipped.
        Returns the users whose state changed."""

    @abstractmethod
    def lag(self, consumer: str) -> tuple[int, float]:
        """(events not yet applied by ``consumer``, arrival time of the oldest of them; 0 if none)."""

    # -- state ---------------------------------------------------------------------------------
    @abstractmethod
    def states(self, users: Sequence[str]) -> dict[str, UserState]:
        """The state of each known user of ``users`` (unknown users are absent)."""

    @abstractmethod
    def put_params(self, params: dict[str, np.ndarray], fingerprint: str, fit_time: float) -> None:
        """Write each user's parameters [H] with the model ``fingerprint`` (one write per user,
        parameters and fingerprint together; non-finite values are refused)."""

    @abstractmethod
    def clear_params(self, fingerprint_not: str) -> int:
        """Drop the parameters of every user fitted on a model other than ``fingerprint_not``."""

    @abstractmethod
    def users(self) -> list[str]:
        """Every user key with state."""

    # -- housekeeping --------------------------------------------------------------------------
    @abstractmethod
    def counts(self) -> dict[str, int]:
        """{'events', 'duplicates', 'new_item_events', 'users'} since the store was created."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailableError (naming ``url`` and the fix) if the store cannot be reached."""

    def close(self) -> None:
        """Release connections (idempotent)."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_params(user: str, params: np.ndarray) -> np.ndarray:
    """[H] float32, finite; InvalidEventError otherwise (never store what could not be served)."""
    a = np.asarray(params, dtype=np.float32).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all():
        raise InvalidEventError(f"parameters of user {user[:12]}... are empty or not finite; refit them")
    return a


# -- helpers shared by the backends -----------------------------------------------------------------
MAX_CONSUMER_BYTES = 128  # longest consumer (group) name accepted


def check_max_history(max_history: int) -> int:
    """``max_history`` as a positive int (ConfigError otherwise)."""
    from ..errors import ConfigError

    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ConfigError(f"max_history must be an integer >= 1 (items kept per user), got {max_history!r}")
    return max_history


def check_consumer(consumer: str) -> str:
    """A consumer (group) name: 1..MAX_CONSUMER_BYTES bytes of text (StoreError otherwise)."""
    from ..errors import StoreError

    if not isinstance(consumer, str) or not consumer.strip() or len(consumer.encode("utf-8", "replace")) > MAX_CONSUMER_BYTES:
        raise StoreError(f"consumer name must be 1..{MAX_CONSUMER_BYTES} bytes of text, got {consumer!r:.60}; "
                         "name the consumer group, e.g. 'learner'")
    return consumer


def check_fingerprint(fingerprint: str) -> str:
    """A non-empty model fingerprint (InvalidEventError otherwise: params without one are never served)."""
    if not isinstance(fingerprint, str) or not fingerprint:
        raise InvalidEventError("parameters need the fingerprint of the model they were fitted on; "
                                "pass fsrec_serve.model.fingerprint of the served model")
    return fingerprint


def encode_params(params: np.ndarray) -> bytes:
    """[H] float32 -> little-endian bytes, as stored."""
    return np.asarray(params, dtype="<f4").tobytes()


def decode_params(blob: bytes | None) -> np.ndarray | None:
    """Stored bytes -> a fresh [H] float32 array (None for none)."""
    if not blob:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def make_state(user: str, history: list, params: bytes | None, fingerprint: str, fit_time: float,
               event_count: int, newest_ts: float) -> UserState:
    """A UserState from stored fields (``history`` = [[item, ts], ...] oldest first)."""
    return UserState(user=user, history=[int(i) for i, _ in history], params=decode_params(params),
                     fingerprint=fingerprint or "", fit_time=float(fit_time or 0.0), event_count=int(event_count or 0),
                     newest_ts=float(newest_ts or 0.0), times=[float(t) for _, t in history])
