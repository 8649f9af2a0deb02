"""SQLiteStore on a real file: URLs, errors, WAL, and several processes sharing the file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fsrec_serve.errors import ConfigError, StoreError, StoreUnavailableError
from fsrec_serve.store import DEFAULT_STORE_ENV, Event, SQLiteStore, open_store
from fsrec_serve.store.redis import RedisStore

REPO = Path(__file__).resolve().parents[2]


def test_open_store_picks_the_backend_from_the_url(tmp_path, monkeypatch):
    f = tmp_path / "s.sqlite3"
    for url in (f"sqlite://{f}", f"sqlite:///{f}", str(f), f):
        with open_store(url, max_history=7) as s:
            assert isinstance(s, SQLiteStore) and s.url == f"sqlite://{f}" and s.path == f and s.max_history == 7
    monkeypatch.setenv("FSREC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(DEFAULT_STORE_ENV, raising=False)
    with open_store() as s:
        assert s.path == tmp_path / "state" / "store.sqlite3" and s.path.is_file()
    monkeypatch.setenv(DEFAULT_STORE_ENV, str(tmp_path / "env.sqlite3"))
    with open_store() as s:
        assert s.path == tmp_path / "env.sqlite3"
    r = open_store("redis://:hunter2@127.0.0.1:1/3")  # no connection is made until it is used
    assert isinstance(r, RedisStore) and "hunter2" not in r.url and "127.0.0.1:1/3" in r.url
    with pytest.raises(ConfigError, match="postgres.*sqlite:///abs/path.*redis://host:port/db"):
        open_store("postgres://db/x")
    with pytest.raises(ConfigError, match="max_history"):
        open_store(f, max_history=0)


def test_a_folder_that_does_not_exist_is_unavailable_and_named(tmp_path):
    path = tmp_path / "missing" / "store.sqlite3"
    with pytest.raises(StoreUnavailableError) as ei:
        SQLiteStore(path)
    msg = str(ei.value)
    assert f"sqlite://{path}" in msg and f"create the folder {path.parent}" in msg and "--store" in msg


def test_the_file_is_in_wal_mode_and_shared_between_threads(tmp_path):
    s = SQLiteStore(tmp_path / "s.sqlite3")
    with sqlite3.connect(tmp_path / "s.sqlite3") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.ping()
    out = []
    t = threading.Thread(target=lambda: out.append(s.append([Event("x", "u", 1, 1.0)])))
    t.start()
    t.join()
    assert out == [[True]] and len(s.pending("c")) == 1
    s.close()
    s.close()  # idempotent, and a closed store reopens on use
    assert len(s.pending("c")) == 1


def test_apply_refuses_a_position_not_from_pending(tmp_path):
    s = SQLiteStore(tmp_path / "s.sqlite3")
    with pytest.raises(StoreError, match="pending"):
        s.apply("c", [("0:1-0", Event("x", "u", 1, 1.0))])


APPENDER = textwrap.dedent("""
    import sys
    from fsrec_serve.store import Event, SQLiteStore
    s = SQLiteStore(sys.argv[1])
    for b in range(int(sys.argv[2])):
        batch = [Event(f"p-{b}-{j}", f"u{(b + j) % 5}", 1 + (b * 10 + j) % 50, float(b * 10 + j)) for j in range(10)]
        assert s.append(batch) == [True] * 10
        assert s.append(batch[:3]) == [False] * 3  # retried: duplicates
    print("appended")
""")

APPLIER = textwrap.dedent("""
    import sys, time
    from fsrec_serve.store import SQLiteStore
    s = SQLiteStore(sys.argv[1])
    deadline = time.time() + 20
    while time.time() < deadline and not (s.lag("learner")[0] == 0 and s.counts()["events"] >= int(sys.argv[2])):
        batch = s.pending("learner", limit=7)
        s.apply("learner", batch) if batch else time.sleep(0.005)
    print("applied")
""")


def test_processes_append_and_apply_concurrently_without_loss_or_duplication(tmp_path):
    path = tmp_path / "shared.sqlite3"
    s = SQLiteStore(path)
    batches, total = 30, 300
    run = {"cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(batches)], **run)
    applier, applied_here = None, 0
    while appender.poll() is None or s.lag("learner")[0]:
        batch = s.pending("learner", limit=5)
        if not batch:
            time.sleep(0.005)
        elif s.apply("learner", batch):
            applied_here += 1
        if applied_here and applier is None:  # a 2nd learner joins once this one has applied a batch
            applier = subprocess.Popen([sys.executable, "-c", APPLIER, str(path), str(total)], **run)
    assert appender.wait(timeout=60) == 0, appender.stderr.read()
    assert applier.wait(timeout=60) == 0, applier.stderr.read()
    assert applied_here > 0  # this process took part
    st = s.states([f"u{k}" for k in range(5)])
    assert sum(x.event_count for x in st.values()) == total
    assert sum(len(x.history) for x in st.values()) == total
    assert all(x.times == sorted(x.times) for x in st.values())
    assert s.counts() == {"events": total, "duplicates": 3 * batches, "new_item_events": 0, "users": 5}
    assert s.pending("learner") == [] and s.lag("learner") == (0, 0.0)
