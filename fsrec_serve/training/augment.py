"""Sequence augmentations (CL4SRec-style): crop, item mask, reorder.

Each works on one training window (a list of item indices, newest last, with aligned ratings)
and returns a new window; ``rng`` is a ``numpy.random.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import numpy as np


def crop(items: list[int], ratings: list[float], ratio: float, rng: np.random.Generator):
    """Keep a random contiguous part of ``ratio`` of the window (at least 2 items)."""
    n = len(items)
    keep = max(2, int(round(ratio * n)))
    if keep >= n:
        return list(items), list(ratings)
    start = int(rng.integers(0, n - keep + 1))
    return list(items[start:start + keep]), list(ratings[start:start + keep])


def mask_items(items: list[int], ratio: float, mask_token: int, rng: np.random.Generator) -> list[int]:
    """Replace ``ratio`` of the items (at least one) by the [MASK] token (inputs only)."""
    n = len(items)
    out = list(items)
    if n == 0:
        return out
    k = max(1, int(round(ratio * n)))
    for j in rng.choice(n, size=min(k, n), replace=False):
        out[int(j)] = mask_token
    return out


def reorder(items: list[int], ratings: list[float], ratio: float, rng: np.random.Generator):
    """Shuffle a random contiguous part of ``ratio`` of the window (items and ratings together)."""
    n = len(items)
    k = max(2, int(round(ratio * n)))
    if n < 2 or k > n:
        return list(items), list(ratings)
    start = int(rng.integers(0, n - k + 1))
    perm = rng.permutation(k) + start
    it, rt = list(items), list(ratings)
    it[start:start + k] = [items[p] for p in perm]
    rt[start:start + k] = [ratings[p] for p in perm]
    return it, rt
