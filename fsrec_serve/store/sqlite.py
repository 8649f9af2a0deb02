"""The embedded store: one SQLite file in WAL mode (the default; one machine).

Several processes may share the file (Triton python stubs append events, a learner applies them):
every write is one ``BEGIN IMMEDIATE`` transaction, so writers take turns (``busy_timeout``) and
readers never block. Each thread has its own connection, so a store object is thread-safe.

Events get an ``AUTOINCREMENT`` sequence number in commit order (SQLite has one writer at a time,
so a reader never sees seq N+1 committed before seq N); a consumer's position is the last
sequence number it applied, kept in ``offsets`` and moved in the same transaction as the state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import StoreError, StoreUnavailableError
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
    insert_in_time_order,
    make_state,
)

BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another process's transaction
CHUNK = 500  # users per `IN (...)` query (under SQLite's variable limit)
COUNTERS = ("events", "duplicates", "new_item_events")  # the counters table's rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, user TEXT NOT NULL,
    item INTEGER NOT NULL, raw_item TEXT NOT NULL DEFAULT '', ts REAL NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS offsets(consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users(
    user TEXT PRIMARY KEY, history TEXT NOT NULL DEFAULT '[]', params BLOB, fingerprint TEXT NOT NULL DEFAULT '',
    fit_time REAL NOT NULL DEFAULT 0, event_count INTEGER NOT NULL DEFAULT 0, newest_ts REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteStore(Store):
    """Per-user state and the event log in one SQLite file (module docstring)."""

    def __init__(self, path: str | Path, max_history: int = DEFAULT_MAX_HISTORY):
        self.path = Path(path).expanduser().absolute()  # the database file
        self.url = f"sqlite://{self.path}"  # sqlite:///abs/path
        self.max_history = check_max_history(max_history)  # items kept per user
        self._local = threading.local()  # this thread's connection
        self._lock = threading.Lock()  # guards _conns
        self._conns: list[sqlite3.Connection] = []  # every open connection (closed by close())
        self._generation = 0  # bumped by close(): older thread-local connections are reopened
        self._conn()  # fail now, with the fix, if the file cannot be opened

    # -- connections -----------------------------------------------------------------------------
    def _unavailable(self, e: Exception) -> StoreUnavailableError:
        hint = (f"create the folder {self.path.parent}" if not self.path.parent.is_dir()
                else f"make {self.path} writable (and its folder, for the WAL files)")
        return StoreUnavailableError(f"sqlite store {self.url}: cannot open or write it ({e}); {hint} "
                                     "or pass --store with a writable path")

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise self._unavailable(FileNotFoundError(f"no folder {self.path.parent}"))
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._init_schema(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise self._unavailable(e) from e
        return conn

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        # switching to WAL needs a moment alone with the file: retry while another process has it
        for attempt in range(50):
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal (a file system without shared memory?)")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, SCHEMA.split(";")):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "key", None) != (os.getpid(), self._generation):
            conn = self._open()  # a new thread, a forked child, or after close()
            with self._lock:
                self._conns.append(conn)
            loc.conn, loc.key = conn, (os.getpid(), self._generation)
        return loc.conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any error)."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._unavailable(e) from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.OperationalError):
                raise self._unavailable(e) from e
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"sqlite store {self.url}: {e}; check the file is a fsrec store") from e
            raise

    def _read(self, sql: str, args: Sequence = ()) -> list:
        try:
            return self._conn().execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise self._unavailable(e) from e

    # -- events ----------------------------------------------------------------------------------
    def append(self, events: Sequence[Event]) -> list[bool]:
        events = list(events)
        if not events:
            return []
        now = time.time()
        out: list[bool] = []
        with self._tx() as c:
            for e in events:
                cur = c.execute("INSERT OR IGNORE INTO events(event_id, user, item, raw_item, ts, received) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (e.event_id, e.user, int(e.item), e.raw_item or "",
                                                              float(e.ts), now))
                out.append(cur.rowcount == 1)
            new = sum(out)
            new_items = sum(1 for e, ok in zip(events, out) if ok and int(e.item) == 0)
            self._bump(c, events=new, duplicates=len(out) - new, new_item_events=new_items)
        return out

    @staticmethod
    def _bump(c: sqlite3.Connection, **deltas: int) -> None:
        for name, d in deltas.items():
            if d:
                c.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, d))

    @staticmethod
    def _offset(c: sqlite3.Connection, consumer: str) -> int:
        row = c.execute("SELECT seq FROM offsets WHERE consumer = ?", (consumer,)).fetchone()
        return int(row[0]) if row else 0

    def pending(self, consumer: str, limit: int = 1000) -> list[tuple[str, Event]]:
        check_consumer(consumer)
        rows = self._read("SELECT seq, event_id, user, item, raw_item, ts FROM events WHERE seq > "
                          "COALESCE((SELECT seq FROM offsets WHERE consumer = ?), 0) ORDER BY seq LIMIT ?",
                          (consumer, max(0, int(limit))))
        return [(str(seq), Event(event_id=eid, user=user, item=int(item), ts=float(ts), raw_item=raw or ""))
                for seq, eid, user, item, raw, ts in rows]

    def apply(self, consumer: str, batch: Sequence[tuple[str, Event]]) -> set[str]:
        check_consumer(consumer)
        try:
            todo = sorted(((int(tok), e) for tok, e in batch), key=lambda t: t[0])
        except (TypeError, ValueError):
            raise StoreError(f"sqlite store {self.url}: apply got a position that is not from pending(); "
                             "pass the (token, event) pairs pending() returned") from None
        if not todo:
            return set()
        with self._tx() as c:
            offset = self._offset(c, consumer)
            todo = [(seq, e) for seq, e in todo if seq > offset]  # applied before: never twice
            if not todo:
                return set()
            users = sorted({e.user for _, e in todo})
            state = {u: [[], 0, 0.0] for u in users}  # user -> [history, event_count, newest_ts]
            for part in _chunks(users):
                marks = ",".join("?" * len(part))
                for user, hist, n, newest in c.execute(
                        f"SELECT user, history, event_count, newest_ts FROM users WHERE user IN ({marks})", part):
                    state[user] = [json.loads(hist), int(n), float(newest)]
            for _, e in todo:
                st = state[e.user]
                if int(e.item) != 0:  # an unknown item is counted, not kept
                    st[0] = insert_in_time_order(st[0], int(e.item), float(e.ts), self.max_history)
                st[1] += 1
                st[2] = max(st[2], float(e.ts))
            c.executemany("INSERT INTO users(user, history, event_count, newest_ts) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT(user) DO UPDATE SET history = excluded.history, "
                          "event_count = excluded.event_count, newest_ts = excluded.newest_ts",
                          [(u, json.dumps(h, separators=(",", ":")), n, t) for u, (h, n, t) in state.items()])
            c.execute("INSERT INTO offsets(consumer, seq) VALUES (?, ?) "
                      "ON CONFLICT(consumer) DO UPDATE SET seq = excluded.seq", (consumer, todo[-1][0]))
        return set(users)

    def lag(self, consumer: str) -> tuple[int, float]:
        check_consumer(consumer)
        n, oldest = self._read("SELECT COUNT(*), MIN(received) FROM events WHERE seq > "
                               "COALESCE((SELECT seq FROM offsets WHERE consumer = ?), 0)", (consumer,))[0]
        return int(n), float(oldest or 0.0)

    # -- state -----------------------------------------------------------------------------------
    def states(self, users: Sequence[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        for part in _chunks(sorted(set(users))):
            marks = ",".join("?" * len(part))
            for row in self._read("SELECT user, history, params, fingerprint, fit_time, event_count, newest_ts "
                                  f"FROM users WHERE user IN ({marks})", part):
                user, hist, params, fp, fit_time, n, newest = row
                out[user] = make_state(user, json.loads(hist), params, fp, fit_time, n, newest)
        return out

    def put_params(self, params: dict[str, np.ndarray], fingerprint: str, fit_time: float) -> None:
        check_fingerprint(fingerprint)
        rows = [(u, encode_params(check_params(u, a)), fingerprint, float(fit_time)) for u, a in params.items()]
        if not rows:
            return
        with self._tx() as c:  # every check passed: now write them all
            c.executemany("INSERT INTO users(user, params, fingerprint, fit_time) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT(user) DO UPDATE SET params = excluded.params, "
                          "fingerprint = excluded.fingerprint, fit_time = excluded.fit_time", rows)

    def clear_params(self, fingerprint_not: str) -> int:
        with self._tx() as c:
            cur = c.execute("UPDATE users SET params = NULL, fingerprint = '', fit_time = 0 "
                            "WHERE params IS NOT NULL AND fingerprint != ?", (fingerprint_not,))
            return int(cur.rowcount)

    def users(self) -> list[str]:
        return [r[0] for r in self._read("SELECT user FROM users ORDER BY user")]

    # -- housekeeping ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {name: 0 for name in COUNTERS}
        out.update({name: int(v) for name, v in self._read("SELECT name, value FROM counters")})
        out["users"] = int(self._read("SELECT COUNT(*) FROM users")[0][0])
        return out

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r}, max_history={self.max_history})"


def _chunks(items: list) -> Iterator[list]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]
