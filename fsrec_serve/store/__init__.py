"""Per-user state and the event log (see :mod:`.base` for the contract).

``open_store(url)`` picks the backend from a URL:

* ``None`` -> $FSREC_STORE if set, else the SQLite file ``<state_dir>/store.sqlite3``;
* ``sqlite:///abs/path`` or a plain file path -> :class:`SQLiteStore`;
* ``redis://host:port/db``, ``rediss://...`` (TLS), ``unix:///path/redis.sock`` -> :class:`RedisStore`
  (imported only then: redis-py is not needed for the SQLite store).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..settings import state_dir
from .base import DEFAULT_MAX_HISTORY, Event, Store, UserState, insert_in_time_order
from .keys import MAX_USER_ID_BYTES, UserKeyer, check_user_id
from .sqlite import SQLiteStore

DEFAULT_STORE_ENV = "FSREC_STORE"  # env: the store URL when none is passed
DEFAULT_SQLITE_NAME = "store.sqlite3"  # the default SQLite file, inside the state folder
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")  # URLs served by RedisStore

__all__ = [
    "DEFAULT_MAX_HISTORY",
    "DEFAULT_STORE_ENV",
    "MAX_USER_ID_BYTES",
    "Event",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "UserKeyer",
    "UserState",
    "check_user_id",
    "insert_in_time_order",
    "open_store",
]


def open_store(url: str | Path | None = None, *, max_history: int = DEFAULT_MAX_HISTORY) -> Store:
    """The store at ``url`` (module docstring for the accepted forms)."""
    if url is None or (isinstance(url, str) and not url.strip()):
        url = os.environ.get(DEFAULT_STORE_ENV, "").strip() or None
    if url is None:
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SQLiteStore(folder / DEFAULT_SQLITE_NAME, max_history=max_history)
    if isinstance(url, Path):
        return SQLiteStore(url, max_history=max_history)
    text = str(url).strip()
    low = text.lower()
    if low.startswith(REDIS_SCHEMES):
        from .redis import RedisStore

        return RedisStore(text, max_history=max_history)
    if low.startswith("sqlite://"):
        rest = text[len("sqlite://"):]
        if rest.startswith("//"):  # sqlite:////abs/path (the SQLAlchemy spelling)
            rest = rest[1:]
        if not rest or rest == "/":
            raise ConfigError(f"store URL {text!r} names no file: use sqlite:///abs/path/store.sqlite3")
        return SQLiteStore(rest, max_history=max_history)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(f"store URL scheme {scheme!r} is not supported: use sqlite:///abs/path, a file path, "
                          "redis://host:port/db, rediss://host:port/db or unix:///path/redis.sock "
                          f"(--store or ${DEFAULT_STORE_ENV})")
    return SQLiteStore(text, max_history=max_history)


def __getattr__(name: str):
    if name == "RedisStore":  # lazily: redis-py is only needed for a redis store
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
