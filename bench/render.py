"""Render BENCHMARKS.md from bench/results/*.json (the shared BENCH_SCHEMA format).

    python -m bench.render            # writes BENCHMARKS.md at the repository root
    python -m bench.render --check    # exit 1 if BENCHMARKS.md is stale

Each benchmark becomes a section with the command, date, machine and commit behind every
number, and one table per (dataset, protocol): rows = method (+ extra fields such as
concurrency or batch), columns = metrics, cells = mean ± std (n).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ORDER = ["quality", "fewshot", "metarec", "export", "serving", "serving-gpu"]
CORE = {"dataset", "protocol", "method", "metric", "mean", "std", "n"}


def _fmt(r: dict) -> str:
    mean, std, n = r["mean"], r.get("std", 0.0), r.get("n", 1)
    big = abs(mean) >= 100
    f = "{:.1f}" if big else ("{:.4f}" if abs(mean) < 10 else "{:.2f}")
    cell = f.format(mean)
    if n and n > 1:
        cell += " ± " + f.format(std)
    return cell + (f" (n={n})" if n and n > 1 else "")


def _row_key(r: dict) -> tuple:
    extras = tuple(sorted((k, str(v)) for k, v in r.items() if k not in CORE))
    return (r.get("method", ""), extras)


def render_benchmark(data: dict, name: str) -> str:
    out = [f"## {data.get('benchmark', name)}", ""]
    out.append(f"- command: `{data.get('command', '?')}`")
    out.append(f"- date: {data.get('date', '?')} · machine: {data.get('machine', '?')} · "
               f"commit: `{data.get('git_commit', '?')}` · source: `bench/results/{name}.json`")
    for key in ("notes", "note", "summary"):
        if data.get(key):
            val = data[key]
            if isinstance(val, list):
                out += [f"- {v}" for v in val]
            else:
                out.append(f"- {val}")
    out.append("")
    groups: dict[tuple, list] = {}
    for r in data.get("results", []):
        groups.setdefault((r.get("dataset", "-"), r.get("protocol", "-")), []).append(r)
    for (dataset, protocol), rows in groups.items():
        metrics: list[str] = []
        table: dict[tuple, dict] = {}
        for r in rows:
            if r["metric"] not in metrics:
                metrics.append(r["metric"])
            table.setdefault(_row_key(r), {})[r["metric"]] = _fmt(r)
        out.append(f"**{dataset} · {protocol}**")
        out.append("")
        out.append("| method | " + " | ".join(metrics) + " |")
        out.append("|---|" + "---|" * len(metrics))
        for (method, extras), cells in table.items():
            label = method + "".join(f" · {k}={v}" for k, v in extras)
            out.append(f"| {label} | " + " | ".join(cells.get(m, "") for m in metrics) + " |")
        out.append("")
    for png in sorted(RESULTS.glob(f"{name}*.png")):
        out.append(f"![{png.stem}](bench/results/{png.name})")
        out.append("")
    return "\n".join(out)


def render() -> str:
    files = sorted((p for p in RESULTS.glob("*.json") if not p.stem.endswith("-quick")), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    parts = [
        "# Benchmarks",
        "",
        "Rendered by `python -m bench.render` from `bench/results/*.json`; do not edit by hand.",
        "Every number carries the command that produced it. Cells are mean ± std (n = seeds or",
        "repeated runs). Absolute speeds on the 2-core machine are lower bounds: the load",
        "generator shares the cores with the server.",
        "",
    ]
    extra = ROOT / "bench" / "NOTES.md"
    if extra.exists():
        parts += [extra.read_text().strip(), ""]
    if not files:
        parts.append("_No results yet._")
    for f in files:
        parts.append(render_benchmark(json.loads(f.read_text()), f.stem))
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if BENCHMARKS.md is out of date")
    args = ap.parse_args(argv)
    text = render()
    target = ROOT / "BENCHMARKS.md"
    if args.check:
        if not target.exists() or target.read_text() != text:
            print("BENCHMARKS.md is stale: run python -m bench.render", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
