"""Bulk event intake: an interaction log (anything the data options read) -> the event log.

Event ids are derived from the (keyed) user, the item, the time and the occurrence number of
that triple, so ingesting the same log twice stores every event once. Raw user ids are hashed
before anything is stored; items unknown to the model's id map are kept as new-item events.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..idmap import IdMap
from .base import Event, Store
from .keys import UserKeyer


@dataclass
class IngestReport:
    rows: int  # interactions read
    stored: int  # events newly stored
    duplicates: int  # events whose id was stored before (a log ingested twice)
    new_item_events: int  # events of items the model's id map does not know (kept, counted)
    users: int  # distinct users in the log
    seconds: float  # wall time


def ingest_log(data, store: Store, item_map: IdMap | None, keyer: UserKeyer, batch: int = 5000,
               progress: Callable[[int], None] | None = None) -> IngestReport:
    """Append every interaction of ``data`` (``data.Interactions``) to ``store``'s event log."""
    t0 = time.perf_counter()
    user_keys = {}
    seen: dict = {}
    events, stored, dups, new_items = [], 0, 0, 0
    users, items, ts = data.users, data.items, np.asarray(data.timestamps, dtype=np.float64)

    def flush():
        nonlocal events, stored, dups
        flags = store.append(events)
        stored += sum(flags)
        dups += len(flags) - sum(flags)
        events = []
        if progress:
            progress(stored + dups)

    for u, i, t in zip(users, items, ts):
        key = user_keys.get(u) or user_keys.setdefault(u, keyer.key(str(u)))
        raw = str(i)
        idx = item_map.index(raw) if item_map is not None and raw in item_map else 0
        new_items += idx == 0
        n = seen.get((key, raw, t), 0)
        seen[(key, raw, t)] = n + 1
        eid = hashlib.sha256(f"{key}\x1f{raw}\x1f{t!r}\x1f{n}".encode()).hexdigest()[:32]
        events.append(Event(eid, key, idx, float(t), raw))
        if len(events) >= batch:
            flush()
    if events:
        flush()
    return IngestReport(len(ts), stored, dups, int(new_items), len(user_keys), time.perf_counter() - t0)
