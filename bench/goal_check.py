"""How a goal is checked against results rows: the :class:`Check` and :class:`Goal` types and
:func:`evaluate_goal`. The goals themselves are declared in ``bench/goals.py``.

A candidate (one method at one load condition) meets a goal when every check passes; the goal is
*met* when some candidate meets it, *missed* when rows exist but none meets it, *not run yet* when
no backing file has the rows.
"""

from __future__ import annotations

import fnmatch
import math
import operator
from dataclasses import dataclass, field
from typing import Optional

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
CONDITION_KEYS = ("concurrency", "batch", "users_per_request")  # load conditions that pair rows

@dataclass(frozen=True)
class Check:
    metric: str  # the row's metric ("ndcg@10", "relative_gain", "throughput_rps", ...)
    op: str  # one of OPS
    threshold: float  # compared with the value
    field: str = "mean"  # row field compared: "mean", "ci_low", "n", "n_users", ...
    over: Optional[str] = None  # method pattern: value = this row / that method's row (same condition)

    def describe(self) -> str:
        lhs = self.metric if self.field == "mean" else f"{self.metric}.{self.field}"
        if self.over:
            lhs = f"{lhs} ÷ {self.over}"
        return f"{lhs} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Goal:
    issue: str  # "10.1": issue number and item
    text: str  # the goal in words, as the issue states it
    files: tuple  # results file stems (fnmatch patterns), preferred first; the first with rows backs it
    protocol: str  # protocol of the rows
    methods: tuple  # candidate method patterns (fnmatch); the best candidate is shown
    checks: tuple  # Check s, all must pass for one candidate; the first one ranks candidates
    dataset: Optional[str] = None  # None = any data set
    where: dict = field(default_factory=dict)  # extra row fields that must match when the row has
    #   them, e.g. {"concurrency": 256} ({"basis": "throughput"} also takes rows without a basis)
    every: bool = False  # True: every candidate must meet the checks (the worst one is shown)
    pair: str = "condition"  # how a Check.over baseline row is found: "condition" = same load
    #   condition as the candidate; "peak" = the baseline's highest-throughput load (any condition)


def _match(row: dict, goal: Goal) -> bool:
    if row.get("protocol") != goal.protocol:
        return False
    if goal.dataset is not None and row.get("dataset") != goal.dataset:
        return False
    return all(row.get(k, v) == v for k, v in goal.where.items())


def condition(row: dict) -> tuple:
    """The load condition of a row (pairs a method's row with its baseline's)."""
    return tuple((k, row[k]) for k in CONDITION_KEYS if k in row)


def _find(rows: list[dict], method_pat: str, metric: str, cond: tuple) -> Optional[dict]:
    for r in rows:
        if r.get("metric") == metric and fnmatch.fnmatch(r.get("method", ""), method_pat) \
                and condition(r) == cond:
            return r
    return None


def _baseline_condition(rows: list[dict], goal: Goal, method_pat: str, cand: dict) -> tuple:
    """The load condition of the baseline row a candidate is divided by (see Goal.pair)."""
    if goal.pair != "peak":
        return condition(cand)
    peak = [r for r in rows if r.get("metric") == "throughput_rps"
            and fnmatch.fnmatch(r.get("method", ""), method_pat)]
    return condition(max(peak, key=lambda r: r["mean"])) if peak else condition(cand)


@dataclass
class GoalResult:
    goal: Goal
    status: str  # "met", "missed", "not run yet"
    file: Optional[str] = None  # results file stem that backs it
    method: Optional[str] = None  # the candidate shown (best one)
    values: list = field(default_factory=list)  # (Check, value or None) for the candidate shown
    row: Optional[dict] = None  # the first check's row of the candidate shown


def evaluate_goal(goal: Goal, files: dict[str, dict]) -> GoalResult:
    """Evaluate ``goal`` against ``files`` (stem -> parsed results JSON)."""
    for pat in goal.files:
        for stem in sorted(s for s in files if fnmatch.fnmatch(s, pat)):
            rows = [r for r in files[stem].get("results", []) if _match(r, goal)]
            first = goal.checks[0]
            cands = [r for r in rows if r.get("metric") == first.metric
                     and any(fnmatch.fnmatch(r.get("method", ""), p) for p in goal.methods)]
            if not cands:
                continue
            scored = []
            for r in cands:
                vals = []
                for ch in goal.checks:
                    cr = r if ch.metric == first.metric else _find(rows, r["method"], ch.metric, condition(r))
                    v = None if cr is None else cr.get(ch.field)
                    if v is not None and ch.over:
                        base = _find(rows, ch.over, ch.metric, _baseline_condition(rows, goal, ch.over, r))
                        bv = None if base is None else base.get(ch.field)
                        v = v / bv if bv else None
                    vals.append((ch, v))
                ok = all(v is not None and OPS[ch.op](v, ch.threshold) for ch, v in vals)
                v0 = vals[0][1]
                rank = -math.inf if v0 is None else (v0 if first.op in (">=", ">") else -v0)
                scored.append((ok, rank, r, vals))
            if all(v is None for s in scored for _, v in s[3][:1]):
                continue  # e.g. the baseline of a ratio is missing in this file
            if goal.every:
                ok, _, r, vals = min(scored, key=lambda s: (s[0], s[1]))
                ok = all(s[0] for s in scored)
            else:
                ok, _, r, vals = max(scored, key=lambda s: (s[0], s[1]))
            return GoalResult(goal, "met" if ok else "missed", stem, r["method"], vals, r)
    return GoalResult(goal, "not run yet")
