"""The answers a rollout checks before and after the swap: well-formed (ids in range, never the
user's own history, scores sorted and finite), equal to ONNX Runtime's on the same graph, and the
smoke histories they are asked for. Pure numpy (the requests that carry them to each target:
:mod:`.targets`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..idmap import pad_left

FILLER_ITEM = -1  # top_items value of an empty slot (exporters.export.FILLER_ITEM)


def check_answers(histories: np.ndarray, items: np.ndarray, scores: np.ndarray, num_items: int) -> list[str]:
    """Problems with served answers (empty list = well-formed): shapes, ids in 1..num_items
    (or the filler -1), the user's own history never recommended, scores finite and sorted."""
    problems: list[str] = []
    if items.shape != scores.shape or items.ndim != 2 or items.shape[0] != histories.shape[0]:
        return [f"answer shapes {items.shape} / {scores.shape} for {histories.shape[0]} histories"]
    real = items != FILLER_ITEM
    if np.any(real & ((items < 1) | (items > num_items))):
        bad = items[real & ((items < 1) | (items > num_items))][:5].tolist()
        problems.append(f"item ids outside 1..{num_items}: {bad}")
    if not np.all(np.isfinite(scores[real])):
        problems.append("non-finite scores")
    if np.any(np.diff(scores, axis=1) > 1e-6):
        problems.append("scores are not sorted best first")
    for row, (h, it) in enumerate(zip(histories, items)):
        own = set(int(x) for x in h if x > 0) & set(int(x) for x in it if x != FILLER_ITEM)
        if own:
            problems.append(f"history {row}: recommends the user's own items {sorted(own)[:5]}")
            break
    return problems


def compare_answers(items: np.ndarray, scores: np.ndarray, ref_items: np.ndarray, ref_scores: np.ndarray,
                    tol: float, k: int = 10) -> tuple[bool, dict]:
    """Served vs ONNX Runtime answers: scores equal within ``tol`` rank by rank and top-``k``
    overlap >= 0.9 (ties may swap items of equal score)."""
    k = min(k, items.shape[1])
    diff = float(np.max(np.abs(scores.astype(np.float64) - ref_scores.astype(np.float64)))) if scores.size else 0.0
    overlap = float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(items, ref_items)]))
    ok = diff <= tol and overlap >= 0.9
    return ok, {"max_score_diff": diff, f"top{k}_overlap": overlap, "tolerance": tol}


def smoke_histories(num_items: int, max_seq_len: int, n: int, seed: int = 0,
                    examples: Sequence | None = None) -> np.ndarray:
    """int64 [n, max_seq_len] left-padded histories: validation examples' histories when given,
    else random ones (lengths 1..max_seq_len, ids 1..num_items)."""
    rows: list[list[int]] = []
    if examples:
        rows = [list(getattr(e, "history", e))[-max_seq_len:] for e in list(examples)[:n]]
        rows = [r for r in rows if r]
    rng = np.random.default_rng(seed)
    while len(rows) < n:
        length = int(rng.integers(1, max_seq_len + 1))
        rows.append(rng.integers(1, num_items + 1, size=length).tolist())
    return pad_left(rows, max_seq_len)

