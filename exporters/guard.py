"""The accuracy and batch-invariance guard of an optimized / quantized candidate.

:func:`check_guard` refuses a candidate whose NDCG@10 on validation users drops more than 1 %
relative to FP32, whose top-10 overlap with FP32 is under 0.9, or whose top-K for a user changes
with the other users of the batch (:func:`check_batch_invariance`). Dynamic INT8 computes the
activation scale over the whole batch and fails the latter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fsrec_serve.errors import ConfigError, QuantizationGuardError
from fsrec_serve.evaluation.metrics import ndcg_at_k, rank_in_top_lists
from fsrec_serve.idmap import pad_left

from .runtime import (
    ExportMeta,
    as_histories,
    export_dir,
    index_translation,
    make_session,
    run_topk,
    topk_overlap,
)


@dataclass
class BatchInvarianceReport:
    """Does a user's top-K change with the other users of the batch?"""

    n_users: int  # users checked (each alone, then inside random batches)
    trials: int  # random batches each user was put in
    batch_size: int  # size of those batches
    changed_users: int  # users whose top-K changed (beyond swaps of near-tied scores)
    max_score_diff: float  # max |score alone - score in a batch| over the returned items
    invariant: bool  # changed_users == 0 and max_score_diff <= score_tol
    score_tol: float  # tolerance used


@dataclass
class GuardReport:
    candidate: str  # export directory checked
    reference: str  # FP32 export directory compared with
    precision: str  # candidate's precision (fsrec_meta.json)
    n_users: int  # validation users
    ndcg_reference: float  # NDCG@10 of the reference on them
    ndcg_candidate: float  # NDCG@10 of the candidate
    ndcg_drop_rel: float  # (ref - cand) / ref; positive = worse
    top10_overlap: float  # mean share of the reference's top-10 the candidate keeps
    batch_invariance: BatchInvarianceReport | None  # None when not checked
    passed: bool  # all criteria met
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when it passed)
    thresholds: dict = field(default_factory=dict)  # max_ndcg_drop, min_top10_overlap, score_tol

    def to_dict(self) -> dict:
        return asdict(self)


def _same_topk(items_a, scores_a, items_b, scores_b, tie_tol: float) -> bool:
    """Equal top-K lists, allowing order swaps / boundary swaps between near-tied scores."""
    if np.array_equal(items_a, items_b):
        return True
    sa = {int(i): float(s) for i, s in zip(items_a, scores_a)}
    sb = {int(i): float(s) for i, s in zip(items_b, scores_b)}
    for i in set(sa) & set(sb):
        if abs(sa[i] - sb[i]) > tie_tol:
            return False
    kth = min(float(scores_a[-1]), float(scores_b[-1]))
    for i in set(sa) ^ set(sb):
        s = sa.get(i, sb.get(i))
        if s > kth + tie_tol:
            return False
    # same items, order differs: the positions that differ must hold near-equal scores
    return bool(np.allclose(np.asarray(scores_a), np.asarray(scores_b), atol=tie_tol, rtol=0))


def check_batch_invariance(
    model_dir: str | Path,
    histories: Sequence,
    n_users: int = 32,
    batch_size: int = 64,
    trials: int = 2,
    score_tol: float = 1e-3,
    tie_tol: float = 1e-5,
    seed: int = 0,
    session=None,
) -> BatchInvarianceReport:
    """Run each of ``n_users`` users alone, then at a random slot of ``trials`` batches of
    ``batch_size`` random other users; the top-K must not change (beyond ties) and no returned
    score may move by more than ``score_tol``."""
    sess = session or make_session(model_dir)
    meta = ExportMeta.load(Path(model_dir) if Path(model_dir).is_dir() else Path(model_dir).parent)
    hist = as_histories(histories)
    if len(hist) < 2:
        raise ConfigError("check_batch_invariance needs at least 2 histories")
    x = pad_left(hist, meta.max_seq_len)
    rng = np.random.default_rng(seed)
    users = rng.choice(len(x), size=min(n_users, len(x)), replace=False)
    changed, max_diff = 0, 0.0
    for u in users:
        alone_items, alone_scores = run_topk(sess, x[u:u + 1], batch_size=1)
        ok = True
        for _ in range(trials):
            mates = rng.choice(len(x), size=batch_size - 1, replace=True)
            slot = int(rng.integers(0, batch_size))
            batch = np.insert(x[mates], slot, x[u], axis=0)
            it, sc = run_topk(sess, batch, batch_size=batch_size)
            bi, bs = it[slot], sc[slot]
            # compare scores of the same items (order-free)
            pos = {int(i): j for j, i in enumerate(bi)}
            common = [(j, pos[int(i)]) for j, i in enumerate(alone_items[0]) if int(i) in pos and i >= 0]
            if common:
                d = max(abs(float(alone_scores[0][a]) - float(bs[b])) for a, b in common)
                max_diff = max(max_diff, d)
            if not _same_topk(alone_items[0], alone_scores[0], bi, bs, tie_tol):
                ok = False
        changed += 0 if ok else 1
    return BatchInvarianceReport(
        n_users=len(users), trials=trials, batch_size=batch_size, changed_users=changed,
        max_score_diff=max_diff, invariant=changed == 0 and max_diff <= score_tol, score_tol=score_tol,
    )


def check_guard(
    candidate_dir: str | Path,
    reference_dir: str | Path,
    valid_examples: Sequence,
    max_ndcg_drop: float = 0.01,
    min_top10_overlap: float = 0.9,
    batch_invariance: bool = True,
    invariance_users: int = 32,
    batch_size: int = 64,
    score_tol: float = 1e-3,
    raise_on_fail: bool = True,
) -> GuardReport:
    """The accuracy and batch-invariance guard of a candidate against the FP32 reference.

    ``valid_examples``: validation ``Example`` objects (``.history``, ``.target``), in the
    reference's item indices (a catalogue-pruned candidate gets them translated). Fails when
    the relative NDCG@10 drop exceeds ``max_ndcg_drop`` (1 %), when the top-10 overlap with the
    reference is under ``min_top10_overlap`` (0.9), or when the candidate is not batch-invariant.
    Raises :class:`QuantizationGuardError` (saying by how much each criterion was missed) unless
    ``raise_on_fail=False``.
    """
    cand, ref = export_dir(candidate_dir), export_dir(reference_dir)
    meta = ExportMeta.load(cand)
    ex = list(valid_examples)
    if not ex or not hasattr(ex[0], "target"):
        raise ConfigError("check_guard needs validation Examples with .history and .target")
    hist = as_histories(ex)
    # a candidate serving a sub-catalogue (catalogue pruning) reads the histories without the items
    # it does not serve, as a client sends them; its top items are compared in the reference's ids
    tr = index_translation(cand, ref)
    cand_hist = hist if tr is None else tr.histories(hist)
    x, xc = pad_left(hist, meta.max_seq_len), pad_left(cand_hist, meta.max_seq_len)
    targets = [int(e.target) for e in ex]
    cand_sess, ref_sess = make_session(cand), make_session(ref)
    ci, _ = run_topk(cand_sess, xc, batch_size=batch_size)
    ci = ci if tr is None else tr.items(ci)
    ri, _ = run_topk(ref_sess, x, batch_size=batch_size)
    nd_c = float(ndcg_at_k(rank_in_top_lists(ci, targets), 10).mean())
    nd_r = float(ndcg_at_k(rank_in_top_lists(ri, targets), 10).mean())
    drop = (nd_r - nd_c) / nd_r if nd_r > 0 else 0.0
    overlap = float(topk_overlap(ri, ci, 10).mean())
    reasons = []
    if drop > max_ndcg_drop:
        reasons.append(
            f"NDCG@10 {nd_c:.4f} vs FP32 {nd_r:.4f}: {100 * drop:.2f}% relative drop exceeds the "
            f"{100 * max_ndcg_drop:.2f}% limit by {100 * (drop - max_ndcg_drop):.2f} points"
        )
    if overlap < min_top10_overlap:
        reasons.append(
            f"top-10 overlap with FP32 {overlap:.3f} is under {min_top10_overlap} by "
            f"{min_top10_overlap - overlap:.3f}"
        )
    inv = None
    if batch_invariance:
        inv = check_batch_invariance(cand, cand_hist, n_users=invariance_users, batch_size=batch_size,
                                     score_tol=score_tol, session=cand_sess)
        if not inv.invariant:
            reasons.append(
                f"not batch-invariant: {inv.changed_users}/{inv.n_users} users' top-K changed with "
                f"their batch-mates, scores moved by up to {inv.max_score_diff:.3g} (tolerance "
                f"{score_tol:g}); a per-batch activation scale (dynamic INT8) does this: use "
                "int8-static or int8-weight-only"
            )
    report = GuardReport(
        candidate=str(cand), reference=str(ref), precision=meta.precision, n_users=len(ex),
        ndcg_reference=nd_r, ndcg_candidate=nd_c, ndcg_drop_rel=drop, top10_overlap=overlap,
        batch_invariance=inv, passed=not reasons, reasons=reasons,
        thresholds={"max_ndcg_drop": max_ndcg_drop, "min_top10_overlap": min_top10_overlap,
                    "score_tol": score_tol},
    )
    if reasons and raise_on_fail:
        raise QuantizationGuardError(f"{cand} ({meta.precision}) refused: " + "; ".join(reasons))
    return report


__all__ = ["BatchInvarianceReport", "GuardReport", "check_batch_invariance", "check_guard"]
