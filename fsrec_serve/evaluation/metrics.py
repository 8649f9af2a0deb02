"""Ranking metrics from the 0-based rank of the target item.

``rank`` = how many candidates are ranked above the target (0 = the target is first).

Ties: :func:`rank_of_targets` is **pessimistic** by default: every other candidate whose score
equals the target's counts as ranked above it (``ties="optimistic"`` counts strictly greater
scores only). With a trained model's float scores ties practically never happen; for the
popularity baseline (integer counts) the pessimistic choice gives a lower bound.

Per-example metrics (the means over examples are the reported numbers):

- ``hit@K``  = 1 if rank < K else 0
- ``ndcg@K`` = 1 / log2(rank + 2) if rank < K else 0  (one relevant item, so IDCG = 1)
- ``mrr@K``  = 1 / (rank + 1) if rank < K else 0

The evaluation protocols, the adaptation's inner checks, the export guard and the benchmarks
compute the metrics with these functions. Torch is imported only by :func:`rank_of_targets`, so
the exporters' guard uses them without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _as_ranks(ranks) -> np.ndarray:
    if hasattr(ranks, "detach"):  # a torch tensor
        ranks = ranks.detach().cpu().numpy()
    r = np.asarray(ranks, dtype=np.float64)
    if r.size and r.min() < 0:
        raise ValueError("ranks are 0-based and must be >= 0")
    return r


def hit_at_k(ranks, k: int) -> np.ndarray:
    """[E] 0-based ranks -> [E] 1.0 where the target is in the top k, else 0.0."""
    r = _as_ranks(ranks)
    return (r < k).astype(np.float64)


def ndcg_at_k(ranks, k: int) -> np.ndarray:
    """[E] 0-based ranks -> [E] 1/log2(rank+2) inside the top k, else 0."""
    r = _as_ranks(ranks)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def mrr_at_k(ranks, k: int) -> np.ndarray:
    """[E] 0-based ranks -> [E] 1/(rank+1) inside the top k, else 0."""
    r = _as_ranks(ranks)
    return np.where(r < k, 1.0 / (r + 1.0), 0.0)


def rank_in_top_lists(top_items, targets: Sequence[int]) -> np.ndarray:
    """0-based rank [B] of each row's target in its served top list (``top_items`` [B, K], best
    first); ``inf`` where the target is not in the list (a miss at every k)."""
    top = np.asarray(top_items)
    hit = top == np.asarray(targets, dtype=top.dtype).reshape(-1, 1)  # [B, K]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)


def rank_of_targets(
    scores: torch.Tensor,  # [B, N] scores of every candidate column
    targets: torch.Tensor,  # [B] column of the target in each row
    exclude: torch.Tensor | None = None,  # [B, N] bool, True = not a candidate (history, padding)
    ties: str = "pessimistic",  # "pessimistic" (equal scores rank above) or "optimistic"
) -> torch.Tensor:
    """0-based rank [B] of each row's target among its candidates.

    Excluded columns never count; the target itself is never excluded even if ``exclude`` marks
    it (a repeated item can be the target).
    """
    import torch

    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    s = scores.float()
    targets = targets.long().view(-1, 1)
    t = s.gather(1, targets)  # [B, 1]
    candidate = torch.ones_like(s, dtype=torch.bool)
    if exclude is not None:
        candidate = ~exclude.bool()
    candidate = candidate.scatter(1, targets, False)  # the target is not its own competitor
    above = ((s > t) & candidate).sum(1)
    if ties == "pessimistic":
        above = above + ((s == t) & candidate).sum(1)
    return above


def summarize_ranks(ranks, ks=(5, 10, 20)) -> dict[str, float]:
    """Mean hr/ndcg/mrr at every k: {"hr@10": ..., "ndcg@10": ..., "mrr@10": ...}."""
    r = _as_ranks(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hit_at_k(r, k).mean()) if r.size else 0.0
        out[f"ndcg@{k}"] = float(ndcg_at_k(r, k).mean()) if r.size else 0.0
        out[f"mrr@{k}"] = float(mrr_at_k(r, k).mean()) if r.size else 0.0
    return out
