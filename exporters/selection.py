"""Choosing the served graph: the fastest candidate that passes the guard, or FP32.

:func:`select_served_model` times every candidate in interleaved rounds, guards each one
(:mod:`exporters.guard`) and records the decision as ``guard_decision.json`` in the chosen
export directory.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fsrec_serve.contract import GUARD_FILE
from fsrec_serve.idmap import pad_left

from .guard import GuardReport, check_guard
from .runtime import ExportMeta, as_histories, export_dir, feeds, index_translation, make_session

logger = logging.getLogger(__name__)


def measure_latency(model_dir: str | Path, histories: Sequence, batch_size: int = 64,
                    repeats: int = 30, warmup: int = 3, intra_op_threads: int = 0,
                    session=None) -> dict:
    """In-process ORT latency of one call at ``batch_size``: {"p50_ms", "p95_ms", "mean_ms", "n"}."""
    sess = session or make_session(model_dir, intra_op_threads=intra_op_threads)
    meta = ExportMeta.load(export_dir(model_dir))
    hist = as_histories(histories)
    x = pad_left((hist * (batch_size // max(1, len(hist)) + 1))[:batch_size], meta.max_seq_len)
    inputs = feeds(sess, x)
    for _ in range(warmup):
        sess.run(None, inputs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, inputs)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(np.mean(times)), "n": len(times)}


@dataclass
class ServedModelDecision:
    chosen: str  # name of the chosen candidate
    chosen_dir: str  # its export directory
    reason: str  # one sentence: why this one
    candidates: dict  # name -> {"dir", "p50_ms", "passed", "reasons", "guard"}
    decision_path: str  # where this decision was written (guard_decision.json)


def select_served_model(
    candidates: Mapping[str, str | Path],
    reference_dir: str | Path,
    valid_examples: Sequence,
    batch_size: int = 64,
    repeats: int = 10,
    rounds: int = 3,
    min_speedup: float = 1.05,
    intra_op_threads: int = 0,
    guard_reports: Mapping[str, GuardReport] | None = None,
    **guard_kwargs,
) -> ServedModelDecision:
    """Guard every candidate (name -> export dir) against the FP32 reference, time each at
    ``batch_size`` and pick the fastest that passes, if it is at least ``min_speedup`` times
    faster than the reference; otherwise the reference (FP32) is served: a quantized model that
    is not clearly faster is not worth its accuracy loss.

    Latency: ``rounds`` interleaved rounds (every candidate once per round, ``repeats`` timed
    calls each), the median of the rounds' p50s, so that a busy machine slows all candidates
    alike. ``guard_reports`` (name -> GuardReport, e.g. from an earlier ``check_guard``) skips
    re-checking those candidates. The decision, with every candidate's numbers and refusal
    reasons, is written as ``guard_decision.json`` in the chosen directory."""
    ref = export_dir(reference_dir)
    ex = list(valid_examples)
    hist = [e.history for e in ex]
    all_c = {"reference": ref, **{k: export_dir(v) for k, v in candidates.items()}}
    reports = dict(guard_reports or {})
    sessions = {n: make_session(d, intra_op_threads=intra_op_threads) for n, d in all_c.items()}
    translations = {n: index_translation(d, ref) for n, d in all_c.items()}  # catalogue-pruned: its own ids
    hists = {n: hist if t is None else t.histories(hist) for n, t in translations.items()}
    times: dict[str, list[float]] = {n: [] for n in all_c}
    for _ in range(max(1, rounds)):
        for n, d in all_c.items():
            times[n].append(measure_latency(d, hists[n], batch_size=batch_size, repeats=repeats,
                                            session=sessions[n])["p50_ms"])
    rows: dict[str, dict] = {}
    for name, d in all_c.items():
        rep = reports.get(name) or check_guard(d, ref, ex, raise_on_fail=False, batch_size=batch_size,
                                               **guard_kwargs)
        p50 = statistics.median(times[name])
        rows[name] = {"dir": str(d), "precision": rep.precision, "p50_ms": p50, "p50_ms_rounds": times[name],
                      "passed": rep.passed, "reasons": rep.reasons, "guard": rep.to_dict()}
        logger.info("candidate %s: p50 %.2f ms at batch %d, %s", name, p50, batch_size,
                    "passed" if rep.passed else "refused: " + "; ".join(rep.reasons))
    ref_ms = rows["reference"]["p50_ms"]
    passing = {k: v for k, v in rows.items() if v["passed"] and k != "reference"}
    fastest = min(passing, key=lambda k: passing[k]["p50_ms"]) if passing else None
    if fastest is not None and ref_ms / rows[fastest]["p50_ms"] >= min_speedup:
        chosen = fastest
        reason = (f"{fastest} is the fastest candidate that passed the guard: "
                  f"{rows[fastest]['p50_ms']:.2f} ms p50 at batch {batch_size} vs FP32 {ref_ms:.2f} ms "
                  f"({ref_ms / rows[fastest]['p50_ms']:.2f}x)")
    elif fastest is not None:
        chosen = "reference"
        reason = (f"serving FP32: the fastest candidate that passed the guard, {fastest} "
                  f"({rows[fastest]['p50_ms']:.2f} ms), is not {min_speedup:g}x faster than FP32 "
                  f"({ref_ms:.2f} ms) at batch {batch_size}")
    else:
        chosen = "reference"
        reason = "serving FP32: no candidate passed the guard"
    refused = [f"{k}: {'; '.join(v['reasons'])}" for k, v in rows.items() if not v["passed"]]
    if refused:
        reason += ". Refused: " + " | ".join(refused)
    chosen_dir = Path(rows[chosen]["dir"])
    path = chosen_dir / GUARD_FILE
    decision = ServedModelDecision(chosen=chosen, chosen_dir=str(chosen_dir), reason=reason,
                                   candidates=rows, decision_path=str(path))
    path.write_text(json.dumps(asdict(decision), indent=2, default=str) + "\n")
    return decision


__all__ = ["GUARD_FILE", "ServedModelDecision", "measure_latency", "select_served_model"]
