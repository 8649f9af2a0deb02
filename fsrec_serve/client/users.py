"""Requests by user id: ``recommend_for_user`` (the ``fsrec_user`` model: store lookup, then the
ranker) and ``record`` (the ``fsrec_events`` model: the event log). Transport-free: builds the
Triton inputs and reads the answers; the sync and asyncio clients send them.

Raw user ids leave the client as they are (over the TLS channel the operator configures) and are
hashed by the server on arrival; the client never logs them. Every event gets an id here when the
caller gives none, so a retried request is stored once.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..contract import (
    INPUT_EVENT_ID,
    INPUT_ITEM_ID,
    INPUT_RECENT_ITEMS,
    INPUT_TIMESTAMP,
    INPUT_USER_ID,
    MAX_RECENT_ITEMS,
    OUTPUT_ACCEPTED,
    OUTPUT_RANKER_VERSION,
    OUTPUT_SOURCE,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    TRITON_ID_DTYPE,
    TRITON_ITEM_IDS_DTYPE,
    TRITON_TIMESTAMP_DTYPE,
    user_id_text,
)
from ..errors import InvalidRequestError
from ..idmap import IdMap, pad_left


@dataclass(frozen=True)
class EventRecord:
    """One interaction to record."""

    user_id: str  # raw user id (hashed by the server)
    item_id: str  # raw item id (an unknown one is kept as a new-item event)
    timestamp: float | None = None  # epoch seconds; None = the server's clock
    event_id: str | None = None  # unique id; None = a random one made here (retries stay idempotent)


def check_user_id(user_id: Any) -> bytes:
    """A raw user id -> its UTF-8 bytes (the contract's rule, ``contract.user_id_text``);
    InvalidRequestError naming the problem (never the id)."""
    text, problem = user_id_text(user_id)
    if problem:
        raise InvalidRequestError(problem)
    return text.encode("utf-8")


def encode_recent(recent: Sequence | None, n_users: int, item_map: IdMap | None, num_items: int | None
                  ) -> np.ndarray | None:
    """Per user a list of raw recent item ids (oldest first) -> int64 [B, R]
    left-padded indices; unknown ids are dropped (the server records them via ``record``)."""
    if recent is None:
        return None
    rows = list(recent)
    if len(rows) != n_users:
        raise InvalidRequestError(f"recent_items has {len(rows)} lists for {n_users} users")
    idx = []
    for r in rows:
        if len(r) > MAX_RECENT_ITEMS:
            raise InvalidRequestError(f"recent_items holds {len(r)} items; at most {MAX_RECENT_ITEMS} are sent "
                                      "per user: record older interactions with record()")
        if item_map is not None:
            idx.append([item_map.index(str(i)) for i in r if str(i) in item_map])
        else:
            idx.append([int(i) for i in r if 1 <= int(i) <= (num_items or int(i))])
    return pad_left(idx, max(1, max(len(r) for r in idx)))


def user_inputs(m, user_ids: Sequence, recent: np.ndarray | None):
    """tritonclient module ``m`` -> (inputs, outputs) of one fsrec_user request."""
    ids = np.array([[check_user_id(u)] for u in user_ids], dtype=object)
    inputs = [m.InferInput(INPUT_USER_ID, list(ids.shape), TRITON_ID_DTYPE)]
    inputs[0].set_data_from_numpy(ids)
    if recent is not None:
        inputs.append(m.InferInput(INPUT_RECENT_ITEMS, list(recent.shape), TRITON_ITEM_IDS_DTYPE))
        inputs[-1].set_data_from_numpy(recent)
    outputs = [m.InferRequestedOutput(n) for n in (OUTPUT_TOP_ITEMS, OUTPUT_TOP_SCORES, OUTPUT_SOURCE,
                                                    OUTPUT_RANKER_VERSION)]
    return inputs, outputs


def event_inputs(m, events: Sequence[EventRecord]):
    """tritonclient module ``m`` -> (inputs, outputs) of one fsrec_events request."""
    now = time.time()
    users = np.array([[check_user_id(e.user_id)] for e in events], dtype=object)
    items = np.array([[str(e.item_id).encode("utf-8")] for e in events], dtype=object)
    ts = np.array([[now if e.timestamp is None else float(e.timestamp)] for e in events], dtype=np.float64)
    if not np.isfinite(ts).all():
        raise InvalidRequestError("timestamp must be a finite number of epoch seconds (or None = now)")
    eids = np.array([[(e.event_id or uuid.uuid4().hex).encode("utf-8")] for e in events], dtype=object)
    inputs = []
    for name, arr, dtype in ((INPUT_USER_ID, users, TRITON_ID_DTYPE), (INPUT_ITEM_ID, items, TRITON_ID_DTYPE),
                             (INPUT_TIMESTAMP, ts, TRITON_TIMESTAMP_DTYPE), (INPUT_EVENT_ID, eids, TRITON_ID_DTYPE)):
        inputs.append(m.InferInput(name, list(arr.shape), dtype))
        inputs[-1].set_data_from_numpy(arr)
    return inputs, [m.InferRequestedOutput(OUTPUT_ACCEPTED)]


def as_events(events: Sequence) -> list[EventRecord]:
    """EventRecord s, dicts or (user, item[, timestamp[, event_id]]) tuples -> EventRecord s."""
    out = []
    for e in events:
        if isinstance(e, EventRecord):
            out.append(e)
        elif isinstance(e, dict):
            out.append(EventRecord(**e))
        else:
            out.append(EventRecord(*e))
        ts = out[-1].timestamp
        if ts is not None and (not isinstance(ts, (int, float)) or not math.isfinite(ts)):
            raise InvalidRequestError(f"timestamp {ts!r}: give finite epoch seconds or None (= now)")
    if not out:
        raise InvalidRequestError("no events to record: pass at least one (user_id, item_id)")
    return out


def decode_user_answer(result, k: int, item_map: IdMap | None, num_items: int | None):
    """A fsrec_user result -> per user (items, scores, source, ranker version)."""
    from .validation import decode_top

    items, scores = result.as_numpy(OUTPUT_TOP_ITEMS), result.as_numpy(OUTPUT_TOP_SCORES)
    source, version = result.as_numpy(OUTPUT_SOURCE), result.as_numpy(OUTPUT_RANKER_VERSION)
    rows = decode_top(items, scores, k, item_map=item_map, num_items=num_items)
    text = lambda a: a.decode() if isinstance(a, bytes) else str(a)  # noqa: E731
    return [(i, s, text(src), text(v)) for (i, s), src, v in zip(rows, source.reshape(-1), version.reshape(-1))]


def accepted_of(result) -> list[bool]:
    return [bool(x) for x in result.as_numpy(OUTPUT_ACCEPTED).reshape(-1)]
