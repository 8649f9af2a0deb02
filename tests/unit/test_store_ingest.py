"""Bulk event intake: a log ingested twice is stored once; unknown items are kept and counted;
raw user ids never reach the store."""

from __future__ import annotations

import numpy as np

from fsrec_serve.data.interactions import Interactions
from fsrec_serve.idmap import IdMap
from fsrec_serve.store import UserKeyer, open_store
from fsrec_serve.store.ingest import ingest_log


def test_ingest_twice_stores_once_and_counts_new_items(tmp_path):
    data = Interactions("log", users=np.array(["alice", "alice", "bob", "alice"], dtype=object),
                        items=np.array(["i1", "i2", "zz", "i1"], dtype=object),
                        timestamps=np.array([10, 20, 5, 30]))
    keyer = UserKeyer.from_secret(b"s" * 32)
    with open_store(tmp_path / "s.sqlite3") as store:
        first = ingest_log(data, store, IdMap(["i1", "i2"]), keyer)
        again = ingest_log(data, store, IdMap(["i1", "i2"]), keyer)
        assert (first.stored, first.duplicates, first.new_item_events, first.users) == (4, 0, 1, 2)
        assert (again.stored, again.duplicates) == (0, 4)
        store.apply("t", store.pending("t"))
        alice = store.states([keyer.key("alice")])[keyer.key("alice")]
        assert alice.history == [1, 2, 1] and alice.event_count == 3  # the repeat of i1 is a new event
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.sqlite3*"))  # the file and its WAL
    assert len(raw) > 1000 and keyer.key("alice").encode() in raw
    assert b"alice" not in raw and b"bob" not in raw
