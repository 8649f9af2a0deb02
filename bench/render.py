"""Render BENCHMARKS.md from bench/results/*.json (the shared BENCH_SCHEMA format).

    python -m bench.render            # writes BENCHMARKS.md (and the plots under bench/results)
    python -m bench.render --check    # exit 1 if BENCHMARKS.md is stale

Layout: the goals table first (computed from ``bench/goals.py``, each row naming the results
file behind it), the runs (command, date, machine, commit per file), the broken-looking
numbers with their causes, then one table per protocol: one row per (data set, method),
metrics and cost as columns, cells mean ± std (n when it differs from the table's), notes once
per table. Per-seed detail stays in the JSON. Smoke runs (``*-quick``) and the files that
``goals.SUPERSEDED`` names stay out of the tables. The output depends only on the JSON files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # `python bench/render.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import goals as G  # noqa: E402
from bench import plots  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MAX_LINES = 515  # issue 13 set 300 lines (aim 250); the live loop (issue 17) added four protocols: 340; the honest k-shot, robustness, serving-cost and ensemble protocols (issues 18-20): 460; pruning (issue 19.1, two data sets): 505; the Beauty ablation rows: 515
ORDER = ["quality", "quality-beauty", "fewshot", "arrivals", "replay", "items", "metarec", "ingest", "export",
         "serving", "serving-varlen", "serving-fastapi", "serving-gpu", "soak"]
FAMILY = re.compile(r"^(.*)-k(\d+)$")  # coldstart-k5 -> ("coldstart", 5)
PROTOCOL_TITLES = {
    "loo-full": "Leave-one-out, full ranking over every user (own history excluded)",
    "coldstart": "Cold-start users: first k interactions as support, the next one as query",
    "arrivals": "Users who arrive after training (stale model, adapted, retrain)",
    "replay": "Prequential replay of the live loop after T (predict, then record; users = all)",
    "coldstart-items": "New items learnt from their first interactions",
    "forgetting": "Continual re-fine-tuning: warm users before / after",
    "metarec": "RecBole-MetaRec protocol (ML-100K, 10 splits)",
    "faults": "Faults during a replay through the stack (kill -9 of learner, tritonserver, redis-server; a rollout)",
    "freshness": "Freshness: event sent -> its user's parameters live (200 events/s, SQLite store)",
    "serving-by-user": "Serving by user id (store lookup + rank) vs by item ids, one server, concurrency 16",
    "ingest": "Reading an interaction log",
    "export": "ONNX export and quantization",
    "serving": "Serving: one user per request, closed loop (best throughput per method)",
    "soak": "Soak: long serving run",
}
METRIC_ORDER = ["hr@10", "ndcg@10", "mrr@10", "ndcg@5", "precision@5", "mrr@5", "graded_ndcg@5", "rmse",
                "relative_gain", "gap_closed", "ratio", "throughput_rps", "p50_ms", "p95_ms", "p99_ms",
                "rows_per_s", "requests", "errors", "rss_growth", "stub_kill_recovery_s",
                "max_abs_diff", "top10_overlap", "seconds", "cpu_seconds", "ms_per_user", "size_kb",
                "peak_mb"]
SKIP_METRICS = {"mean_batch_size", "client_cpu_ms_per_req", "batch_max_score_diff", "guard_passed"}
KSHOT_MAIN = "ndcg@10"  # the metric shown for every k in k-shot tables (the rest at one k)


# -- loading ------------------------------------------------------------------------------------
def load(results_dir: Path) -> dict[str, dict]:
    """stem -> parsed results file, for every *.json under ``results_dir``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))}


def _file_order(stem: str) -> tuple:
    return (ORDER.index(stem) if stem in ORDER else len(ORDER), stem)


# -- formatting ---------------------------------------------------------------------------------
def _spec(v: float) -> str:
    """The format of a number by its magnitude (4 significant-ish digits)."""
    a = abs(v)
    if a == 0:
        return "{:.0f}"
    if a < 1e-3:
        return "{:.1e}"
    if a >= 1000:
        return "{:,.0f}"
    if a >= 100:
        return "{:.1f}"
    if a >= 10:
        return "{:.2f}"
    return "{:.4f}" if a < 1 else "{:.3f}"


def fmt_num(v, like=None) -> str:
    """A number for a table; ``like``: format it as that number is formatted (std as its mean)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) and like is None:
        return f"{v:,}"
    spec = _spec(like if isinstance(like, (int, float)) and like and "e" not in _spec(like) else v)
    return spec.format(v)


def fmt_cell(r: dict, table_n: Optional[int] = None) -> str:
    cell = fmt_num(r["mean"])
    n = r.get("n", 1)
    if n and n > 1 and r.get("std") is not None:
        cell += f" ± {fmt_num(r['std'], like=r['mean'])}"
    if "ci_low" in r and "ci_high" in r:
        cell += f" [{fmt_num(r['ci_low'], like=r['mean'])}, {fmt_num(r['ci_high'], like=r['mean'])}]"
    if table_n is not None and n != table_n:
        cell += f" (n={n})"
    return cell


def cells_line(cells: list[str]) -> str:
    """One markdown table line; a "|" inside a cell is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _metric_key(m: str) -> tuple:
    return (METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER), m)


def _notes(data: dict, limit: int = 3, width: int = 240) -> list[str]:
    """The file's notes, at most ``limit`` of at most ``width`` characters (the rest: JSON)."""
    out: list[str] = []
    for key in ("notes", "note", "summary"):
        v = data.get(key)
        out += [str(x) for x in v] if isinstance(v, list) else ([str(v)] if v else [])
    more = len(out) - limit
    out = [n if len(n) <= width else n[:width].rsplit(" ", 1)[0] + " …" for n in out[:limit]]
    out += [f"({more} more notes in the JSON)"] if more > 0 else []
    runs = [r for r in data.get("runs", []) if "best_epoch" in r]
    if runs:  # convergence at a glance; the per-epoch curves stay in runs[].history
        stopped = [r for r in runs if "stopped_early" in r]
        out.insert(0, "best epoch / epochs run: " + ", ".join(
            f"{r.get('method', '')} seed {r.get('seed', '?')} {r['best_epoch']}/{r.get('epochs_run', '?')}"
            for r in runs) + (f" (early stopping ended {sum(bool(r['stopped_early']) for r in stopped)} "
                              f"of {len(stopped)})" if stopped else ""))
    return out


def table_condition(r: dict) -> tuple:
    """What tells two rows of one method and metric apart in a table (load, generator, split)."""
    return G.condition(r) + tuple((k, r[k]) for k in ("load_generator", "split") if k in r)


# -- goals --------------------------------------------------------------------------------------
def goal_rows(files: dict[str, dict]) -> list[G.GoalResult]:
    return [G.evaluate_goal(g, files) for g in G.GOALS]


def _measured(res: G.GoalResult) -> str:
    if res.status == "not run yet":
        return "–"
    parts = []
    for ch, v in res.values:
        name = ch.metric if ch.field == "mean" else f"{ch.metric}.{ch.field}"
        if ch.over:
            name += f" ÷ {ch.over}"
        val = "missing" if v is None else fmt_num(v)
        if ch.field == "mean" and not ch.over and res.row is not None and ch.metric == res.row["metric"]:
            val = fmt_cell(res.row)
        parts.append(f"{name} {val}")
    cond = ", ".join(([res.row["dataset"]] if res.goal.dataset is None and "dataset" in (res.row or {}) else [])
                     + [f"{k}={v}" for k, v in G.condition(res.row or {})])
    return f"{res.method}{f' ({cond})' if cond else ''}: " + "; ".join(parts)


def goals_section(files: dict[str, dict]) -> list[str]:
    res = goal_rows(files)
    count = Counter(r.status for r in res)
    out = ["## Goals", "",
           f"{count['met']} met, {count['missed']} missed, {count['not run yet']} not run yet. "
           "Each goal is declared once in `bench/goals.py`; the best candidate is shown.", "",
           "| issue | goal | threshold | measured | status | backed by |", "|---|---|---|---|---|---|"]
    for r in res:
        thr = "; ".join(c.describe() for c in r.goal.checks)
        status = {"met": "**met**", "missed": "**missed**"}.get(r.status, r.status)
        src = f"`{r.file}.json`" if r.file else "–"
        if r.file and r.row and G.superseded(r.file, r.row.get("protocol", "")):
            src += " (superseded run)"
        out.append(cells_line([f"#{r.goal.issue}", r.goal.text, thr, _measured(r), status, src]))
    return out + [""]


def runs_section(files: dict[str, dict], used: list[str]) -> list[str]:
    out = ["## Runs behind the numbers", ""]
    for s in used:
        d = files[s]
        tag = " (superseded: " + G.SUPERSEDED[s] + ")" if s in G.SUPERSEDED else ""  # whole file
        out.append(f"- `{s}.json`{tag}: `{d.get('command', '?')}` · {d.get('date', '?')} · "
                   f"{d.get('machine', '?')} · commit `{d.get('git_commit', '?')}`")
    skipped = sorted(s for s in files if s.endswith("-quick"))
    if skipped:
        out.append(f"- smoke runs kept in JSON only: {', '.join(f'`{s}.json`' for s in skipped)}")
    return out + [""]


def broken_section(files: dict[str, dict]) -> list[str]:
    """Every flagged row with its cause; rows of one file, data set, protocol family and metric
    are summarized in one line (value range, protocols, methods)."""
    groups: dict[tuple, list] = {}
    for s in sorted((s for s in files if not s.endswith("-quick")), key=_file_order):
        for r in files[s].get("results", []):
            why = G.flag_reason(r)
            if why:
                key = (s, r.get("dataset", "-"), _family(r.get("protocol", "-"))[0], r.get("metric"))
                groups.setdefault(key, []).append((r, why, G.known_cause(s, r)))
    out = ["## Broken-looking numbers", ""]
    for (s, ds, _, metric), hits in groups.items():
        protos = "/".join(dict.fromkeys(r.get("protocol", "-") for r, _, _ in hits))
        methods = ", ".join(dict.fromkeys(r.get("method", "-") for r, _, _ in hits))
        if len(hits) == 1:
            what = hits[0][1]
        else:
            vals = [r["mean"] for r, _, _ in hits]
            what = f"{metric} {fmt_num(min(vals))} to {fmt_num(max(vals))} ({len(hits)} rows)"
        cause = hits[0][2]
        out.append(f"- `{s}.json` {ds} {protos} {methods}: {what}. "
                   + (f"Cause: {cause}." if cause else "**Cause not explained yet.**"))
    if len(out) == 2:
        out.append("None: no ratio below 0.5, gain below -10 % or gap closed outside [-0.5, 1].")
    return out + [""]


# -- protocol tables ----------------------------------------------------------------------------
def _family(protocol: str) -> tuple[str, Optional[int]]:
    m = FAMILY.match(protocol)
    return (m.group(1), int(m.group(2))) if m else (protocol, None)


def _lead(rows: list[tuple[str, dict]]) -> dict:
    """(file, data set, method) -> the condition shown: where its throughput is highest
    (serving), else none."""
    best: dict[tuple, tuple] = {}
    for stem, r in rows:
        key = (stem, r.get("dataset", "-"), r["method"])
        if r["metric"] == "throughput_rps" and (key not in best or r["mean"] > best[key][0]):
            best[key] = (r["mean"], table_condition(r))
    return {k: c for k, (_, c) in best.items()}


def protocol_table(family: str, rows: list[tuple[str, dict]], files: dict[str, dict]) -> list[str]:
    """One markdown table for a protocol family: rows (file, dataset, method), metric columns."""
    ks = sorted({_family(r["protocol"])[1] for _, r in rows} - {None})
    at_k = (5 if 5 in ks else ks[-1]) if ks else None
    cells: dict[tuple, dict[str, dict]] = {}
    lead = _lead(rows)
    for stem, r in rows:
        k = _family(r["protocol"])[1]
        if k is not None and r["metric"] == KSHOT_MAIN:
            col = f"{KSHOT_MAIN} k={k}"
        elif k is not None and k != at_k:
            continue
        else:
            col = r["metric"] if k is None else f"{r['metric']} k={k}"
        key = (stem, r.get("dataset", "-"), r["method"])
        cond, want = table_condition(r), lead.get(key)
        if cond and want is not None and cond != want:
            continue
        cells.setdefault(key, {}).setdefault(col, r)  # first row of a (method, column) wins
    cols = sorted({c for v in cells.values() for c in v},
                  key=lambda c: (not c.startswith(f"{KSHOT_MAIN} k="), _metric_key(c.split(" k=")[0]),
                                 int(c.split("k=")[1]) if "k=" in c else 0))
    ns = Counter(r.get("n", 1) for v in cells.values() for r in v.values())
    table_n = ns.most_common(1)[0][0] if ns else 1
    stems = list(dict.fromkeys(s for s, _ in rows))
    multi = len(stems) > 1
    out = [f"### {PROTOCOL_TITLES.get(family, family)}", ""]
    for s in stems:
        notes = _notes(files[s])
        row_notes = sorted({str(r["note"]) for st, r in rows if st == s and r.get("note")})
        why = G.superseded(s, next(r["protocol"] for st, r in rows if st == s))
        src = f"`{s}.json`" + (f" (superseded: {why})" if why else "")
        out.append(f"- {src}" + (": " + "; ".join(notes + row_notes) if notes or row_notes else ""))
    if ks:
        out.append(f"- {KSHOT_MAIN} for every k; the other columns at k={at_k}; "
                   "[a, b] = 95 % bootstrap CI over users")
    if lead:
        out.append("- each method at its best-throughput load (column `at`); the plot shows every load")
    out.append(f"- cells: mean ± std over n={table_n} seeds/runs unless marked")
    out.append("")
    head = (["run"] if multi else []) + ["data set", "method"] + (["at"] if lead else []) + cols
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (stem, ds, method), v in sorted(cells.items(), key=lambda kv: (_file_order(kv[0][0]), kv[0][1])):
        at = ", ".join(f"{k}={x}" for k, x in lead.get((stem, ds, method), ()))
        line = ([stem] if multi else []) + [ds, method] + ([at] if lead else [])
        line += [fmt_cell(v[c], table_n) if c in v else "" for c in cols]
        out.append(cells_line(line))
    return out + [""]


def tables_section(files: dict[str, dict], results_dir: Path, make_plots: bool) -> tuple[list[str], set]:
    """The protocol tables and the results files they show."""
    fams: dict[str, list[tuple[str, dict]]] = {}
    keep = [(s, r) for s in sorted((s for s in files if not s.endswith("-quick")), key=_file_order)
            for r in files[s].get("results", [])
            if r.get("metric") not in SKIP_METRICS and "/" not in r.get("method", "")]
    covered = {(r.get("dataset"), r.get("protocol")) for s, r in keep
               if not G.superseded(s, r.get("protocol", ""))}
    for s, r in keep:  # superseded rows only where nothing newer covers the data set and protocol
        if not G.superseded(s, r.get("protocol", "")) or (r.get("dataset"), r.get("protocol")) not in covered:
            fams.setdefault(_family(r.get("protocol", "-"))[0], []).append((s, r))
    out = ["## Results by protocol", ""]
    order = list(PROTOCOL_TITLES)
    for fam in sorted(fams, key=lambda f: (order.index(f) if f in order else len(order), f)):
        out += protocol_table(fam, fams[fam], files)
        for png in plots.for_family(fam, fams[fam], results_dir, make_plots):
            out += [f"![{png.stem}](bench/results/{png.name})", ""]
    return out, {s for rows in fams.values() for s, _ in rows}


def render(results_dir: Path = RESULTS, make_plots: bool = False) -> str:
    files = load(results_dir)
    parts = [
        "# Benchmarks", "",
        "Rendered by `python -m bench.render` from `bench/results/*.json`; do not edit by hand.",
        "Per-seed detail, per-user counts and raw load points stay in the JSON files. Timings on",
        "the 2-core development machine were taken while other jobs ran: read them as lower bounds.",
        "",
    ]
    parts += goals_section(files)
    tables, shown = tables_section(files, results_dir, make_plots)
    backing = {r.file for r in goal_rows(files) if r.file}
    parts += broken_section(files)
    parts += runs_section(files, sorted(shown | backing, key=_file_order))
    parts += tables if files else ["_No results yet._"]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if BENCHMARKS.md is out of date")
    ap.add_argument("--results", default=str(RESULTS), help="results folder")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file written")
    args = ap.parse_args(argv)
    text = render(Path(args.results), make_plots=not args.check)
    target = Path(args.out)
    n = text.count("\n")
    if args.check:
        if not target.exists() or target.read_text() != text:
            print("BENCHMARKS.md is stale: run python -m bench.render", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target} ({n} lines)")
    if n > MAX_LINES:
        print(f"BENCHMARKS.md has {n} lines, over the {MAX_LINES}-line limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
