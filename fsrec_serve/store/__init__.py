"""Per-user state and the event log (see :mod:`.base` for the contract).

``open_store(url)`` picks the backend from a URL:

* ``None`` -> $FSREC_STORE if set, else the SQLite file ``<state_dir>/store.sqlite3``;
* ``sqlite:///abs/path`` or a plain file path -> :class:`SQLiteStore`;
* ``redis://host:port/db``, ``rediss://...`` (TLS), ``unix:///path/redis.sock`` -> :class:`RedisStore`
  (imported only then: redis-py is not needed for the SQLite store). ``?partitions=N`` in a redis
  URL splits the event log into N streams (one learner per partition, ``fsrec learn --partition
  I``); writers and learners must agree on N, so it travels in the one URL they all share
  ($FSREC_STORE of tritonserver and of every learner).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from ..contract import MAX_USER_ID_BYTES
from ..errors import ConfigError
from ..settings import state_dir
from .base import DEFAULT_MAX_HISTORY, Event, Store, UserState, insert_in_time_order
from .keys import UserKeyer, check_user_id
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


def _split_partitions(url: str) -> tuple[str, int | None]:
    """(``url`` without its ``partitions`` query parameter, that parameter or None): redis-py
    refuses query parameters it does not know."""
    base, _, query_text = url.partition("?")  # by hand: urlunsplit turns unix:///path into unix:/path
    query = parse_qsl(query_text, keep_blank_values=True)
    values = [v for k, v in query if k == "partitions"]
    if not values:
        return url, None
    if len(values) > 1 or not values[0].strip().isdigit() or int(values[0]) < 1:
        raise ConfigError(f"store URL: partitions={','.join(values)!r} must be one integer >= 1")
    rest = urlencode([(k, v) for k, v in query if k != "partitions"])
    return base + (f"?{rest}" if rest else ""), int(values[0])


def open_store(url: str | Path | None = None, *, max_history: int = DEFAULT_MAX_HISTORY,
               partitions: int | None = None, owned_partitions: Sequence[int] | None = None) -> Store:
    """The store at ``url`` (module docstring for the accepted forms). ``partitions`` /
    ``owned_partitions`` (a learner's share of the event log) need a redis store; ``partitions``
    must then agree with the URL's ``?partitions=N`` when it has one."""
    if url is None or (isinstance(url, str) and not url.strip()):
        url = os.environ.get(DEFAULT_STORE_ENV, "").strip() or None
    text = None if url is None or isinstance(url, Path) else str(url).strip()
    is_redis = text is not None and text.lower().startswith(REDIS_SCHEMES)
    if not is_redis and (partitions is not None or owned_partitions is not None):
        where = "the embedded SQLite file" if url is None else repr(str(url))
        raise ConfigError(f"event partitions need a redis store (several learners, one per partition), but the "
                          f"store is {where}, which one learner serves: drop --partitions/--partition or pass "
                          "--store redis://host:port/db")
    if url is None:
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SQLiteStore(folder / DEFAULT_SQLITE_NAME, max_history=max_history)
    if isinstance(url, Path):
        return SQLiteStore(url, max_history=max_history)
    low = text.lower()
    if is_redis:
        from .redis import RedisStore, redact_url

        plain, in_url = _split_partitions(text)
        if partitions is not None and in_url is not None and partitions != in_url:
            raise ConfigError(f"partitions={partitions} disagrees with the store URL's partitions={in_url} "
                              f"({redact_url(plain)}): writers and learners must use one count")
        n = partitions if partitions is not None else (in_url or 1)
        return RedisStore(plain, max_history=max_history, partitions=n, owned_partitions=owned_partitions)
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
