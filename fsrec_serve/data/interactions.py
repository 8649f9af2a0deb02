"""``Interactions``: an interaction log held as int codes, not one Python object per row."""

from __future__ import annotations

import numpy as np


def encode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vocab [V] object array of str, sorted; codes [N] int32) of an array of raw ids."""
    vocab, codes = np.unique(np.asarray(raw).astype(str).astype(object), return_inverse=True)
    return vocab.astype(object), codes.astype(np.int32).reshape(-1)


def _n_used(codes: np.ndarray, vocab: np.ndarray) -> int:
    """Distinct ids that rows use (the vocabulary may hold unused ids after row filtering)."""
    if len(codes) == 0:
        return 0
    return int(np.count_nonzero(np.bincount(codes, minlength=len(vocab))))


class Interactions:
    """An interaction log in raw ids. Arrays are aligned; order within a user is time order
    (ties keep file order).

    Raw ids are dictionary-encoded: ``user_codes``/``item_codes`` [N] int32 index the
    vocabularies ``user_vocab``/``item_vocab`` (one Python string per distinct id, in no
    particular order; after cleaning some entries may be unused). ``users`` and ``items`` give
    the raw ids per row (built on first use; avoid them on very large logs).
    """

    def __init__(
        self,
        name: str,  # data set name ("ml-100k", "beauty", or the spec's name)
        users: np.ndarray | None = None,  # [N] raw user ids (or pass user_codes + user_vocab)
        items: np.ndarray | None = None,  # [N] raw item ids (or pass item_codes + item_vocab)
        ratings: np.ndarray | None = None,  # [N] float32 ratings (1.0 where the log has none)
        timestamps: np.ndarray | None = None,  # [N] int64 time, or the position in the file
        has_timestamps: bool = True,  # False when timestamps are only positions
        item_features: dict | None = None,  # raw item -> multi-hot float32 vector
        feature_names: list | None = None,  # names of the feature columns
        user_features: dict | None = None,  # raw user -> demographics
        item_names: dict | None = None,  # raw item -> title, where known
        *,
        user_codes: np.ndarray | None = None,  # [N] int32 codes into user_vocab
        user_vocab: np.ndarray | None = None,  # [U] unique raw user ids (object)
        item_codes: np.ndarray | None = None,  # [N] int32 codes into item_vocab
        item_vocab: np.ndarray | None = None,  # [I] unique raw item ids (object)
        stats: dict | None = None,  # counts of the reading and cleaning steps
    ):
        self.name = name
        if user_codes is None:
            user_vocab, user_codes = encode(users)
        if item_codes is None:
            item_vocab, item_codes = encode(items)
        self.user_codes, self.user_vocab = np.asarray(user_codes, np.int32), np.asarray(user_vocab, object)
        self.item_codes, self.item_vocab = np.asarray(item_codes, np.int32), np.asarray(item_vocab, object)
        n = len(self.user_codes)
        self.ratings = np.ones(n, np.float32) if ratings is None else np.asarray(ratings, np.float32)
        self.timestamps = (np.arange(n, dtype=np.int64) if timestamps is None
                           else np.asarray(timestamps, np.int64))
        self.has_timestamps = has_timestamps
        self.item_features = item_features or {}
        self.feature_names = list(feature_names or [])
        self.user_features = user_features or {}
        self.item_names = item_names or {}
        self.stats = stats or {}
        self.spec = None  # the DataSpec it was read with (load_interactions sets it; splits record it)
        self._users: np.ndarray | None = None
        self._items: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_codes)

    @property
    def users(self) -> np.ndarray:
        """[N] raw user ids (object array of str)."""
        if self._users is None:
            self._users = self.user_vocab[self.user_codes]
        return self._users

    @property
    def items(self) -> np.ndarray:
        """[N] raw item ids (object array of str)."""
        if self._items is None:
            self._items = self.item_vocab[self.item_codes]
        return self._items

    @property
    def n_users(self) -> int:
        return _n_used(self.user_codes, self.user_vocab)

    @property
    def n_items(self) -> int:
        return _n_used(self.item_codes, self.item_vocab)

    def time_order(self, by_raw_id: bool = False) -> np.ndarray:
        """[N] row order: grouped by user (by raw id string order with ``by_raw_id``), then
        time, then file order."""
        key = self.user_codes
        if by_raw_id:
            rank = np.empty(len(self.user_vocab), np.int64)
            rank[np.argsort(self.user_vocab.astype(str), kind="stable")] = np.arange(len(self.user_vocab))
            key = rank[self.user_codes]
        return np.lexsort((np.arange(len(self)), self.timestamps, key))

    def sequences(self) -> dict[str, list[tuple[str, float, int]]]:
        """raw user -> [(raw item, rating, timestamp)] in time order (ties keep file order);
        users in raw id order."""
        order = self.time_order(by_raw_id=True)
        out: dict[str, list[tuple[str, float, int]]] = {}
        uv, iv = self.user_vocab, self.item_vocab
        for u, i, r, t in zip(self.user_codes[order].tolist(), self.item_codes[order].tolist(),
                              self.ratings[order].tolist(), self.timestamps[order].tolist()):
            out.setdefault(uv[u], []).append((iv[i], r, t))
        return out

    def __repr__(self) -> str:
        return f"Interactions({self.name!r}, {len(self)} rows, {self.n_users} users, {self.n_items} items)"
