"""Cleaning steps on a coded log, in order: implicit threshold, duplicates, k-core, short users.

Each step records what it removed in ``Interactions.stats`` (shown by ``fsrec data stats``).
Everything runs on int codes with numpy; rows keep their file order. Vocabularies are not
compacted (an id whose rows were all dropped keeps an unused entry: cheaper than re-coding
every row of a large log).
"""

from __future__ import annotations

import numpy as np

from ..errors import EmptyUserError
from .interactions import Interactions
from .spec import DataSpec


def _take(data: Interactions, keep: np.ndarray) -> None:
    """Keep the rows where ``keep`` [N] bool is True (in place)."""
    data.user_codes = data.user_codes[keep]
    data.item_codes = data.item_codes[keep]
    data.ratings = data.ratings[keep]
    data.timestamps = data.timestamps[keep]
    data._users = data._items = None


def dedupe(data: Interactions, policy: str) -> int:
    """Repeated (user, item) pairs: keep all, the first or last in time order, or drop them all.
    Returns the number of rows removed."""
    if policy == "keep" or len(data) == 0:
        return 0
    order = data.time_order()  # by user, time, file order
    key = data.user_codes[order].astype(np.int64) * len(data.item_vocab) + data.item_codes[order]
    if policy == "last":
        rev = order[::-1]
        key_r = key[::-1]
        _, first_r = np.unique(key_r, return_index=True)
        kept = rev[first_r]
    else:
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
        kept = order[first if policy == "first" else first[counts == 1]]
    keep = np.zeros(len(data), dtype=bool)
    keep[kept] = True
    removed = int(len(data) - keep.sum())
    _take(data, keep)
    return removed


def k_core(data: Interactions, user_core: int, item_core: int) -> tuple[int, int, int]:
    """Iteratively drop users with < user_core and items with < item_core interactions until
    both hold. Returns (rows removed, users removed, items removed)."""
    if user_core <= 1 and item_core <= 1:
        return 0, 0, 0
    n0, u0, i0 = len(data), data.n_users, data.n_items
    while True:
        uc = np.bincount(data.user_codes, minlength=len(data.user_vocab))
        ic = np.bincount(data.item_codes, minlength=len(data.item_vocab))
        keep = (uc[data.user_codes] >= user_core) & (ic[data.item_codes] >= item_core)
        if keep.all():
            break
        _take(data, keep)
    return n0 - len(data), u0 - data.n_users, i0 - data.n_items


def clean(data: Interactions, spec: DataSpec) -> Interactions:
    """Run the cleaning steps of ``spec`` on ``data`` (in place) and record the counts.
    (Vocabularies may hold unused ids: Parquet dictionaries can be wider than the rows read.)"""
    st = data.stats
    user_counts = np.bincount(data.user_codes, minlength=len(data.user_vocab))  # [U]
    item_counts = np.bincount(data.item_codes, minlength=len(data.item_vocab))  # [I]
    st["users_read"], st["items_read"] = int((user_counts > 0).sum()), int((item_counts > 0).sum())
    changed = False  # the counts above are still those of the rows
    if spec.implicit_threshold is not None:
        keep = data.ratings >= spec.implicit_threshold
        st["implicit_threshold"] = spec.implicit_threshold
        st["rows_below_threshold"] = int((~keep).sum())
        _take(data, keep)
        data.ratings = np.ones(len(data), dtype=np.float32)
        changed = True
    st["duplicates_policy"] = spec.duplicates
    st["duplicate_rows_removed"] = dedupe(data, spec.duplicates)
    rows, users, items = k_core(data, spec.user_core, spec.item_core)
    st["k_core"] = {"user_core": spec.user_core, "item_core": spec.item_core,
                    "rows_removed": rows, "users_removed": users, "items_removed": items}
    if changed or st["duplicate_rows_removed"] or rows:
        user_counts = np.bincount(data.user_codes, minlength=len(data.user_vocab))
        item_counts = np.bincount(data.item_codes, minlength=len(data.item_vocab))
    short = (user_counts > 0) & (user_counts < spec.min_user_interactions)
    st["min_user_interactions"] = spec.min_user_interactions
    st["short_users_dropped"] = int(short.sum())
    st["short_user_rows_dropped"] = int(user_counts[short].sum())
    if short.any():
        drop = short[data.user_codes]  # [N] bool
        item_counts = item_counts - np.bincount(data.item_codes[drop], minlength=len(item_counts))
        _take(data, ~drop)
    st["rows"], st["users"] = len(data), int(((user_counts > 0) & ~short).sum())
    st["items"] = int((item_counts > 0).sum())
    if len(data) == 0:
        raise EmptyUserError(
            f"{st.get('file', data.name)}: no interaction is left after cleaning ({st}); lower "
            "min_user_interactions / user_core / item_core or the implicit threshold"
        )
    return data
