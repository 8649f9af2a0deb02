"""Few-shot report: markdown tables and PNG plots from ``bench/results/*.json`` files.

Reads the shared benchmark format (``results[]`` with dataset / protocol / method / metric /
mean / std / n) written by ``bench/fewshot.py`` and ``bench/metarec.py`` and writes:

* ``<out>/adaptation_report.md``: per data set a k-shot table (rows = methods, columns = k,
  ``mean ± std`` over seeds), adapter sizes and adaptation seconds, the cold-item, forgetting and
  MetaRec rows;
* ``<out>/fewshot_<dataset>_<metric>.png``: the metric against k per method, error bars = std.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

KSHOT = re.compile(r"^coldstart-k(\d+)$")
PUBLISHED_METAREC = ("Published under the same protocol (RecBole-MetaRec, ML-100K, nDCG@5): "
                     "MeLU 0.5331, MAMO 0.5929, TaNP 0.5994; random order scores about 0.50.")
METHOD_ORDER = ["popularity", "zero-shot", "head-only", "full", "lora", "adalora", "ia3", "prefix",
                "prompt", "auto", "lora-per-user", "item-embeddings", "lora-replay", "full-noreplay",
                "item-mean", "item-knn", "knn-blend", "fsrec-rating-head", "fsrec-blend",
                "fsrec-knn-blend", "fsrec-adapted-rating-head", "fsrec-adapted-blend"]


def load_results(paths: Iterable) -> tuple[list[dict], list[dict]]:
    """(all result rows, the files' headers) from one or more results JSON files."""
    rows, headers = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        headers.append({k: d.get(k) for k in ("benchmark", "command", "date", "machine", "git_commit")})
        rows += d.get("results", [])
    return rows, headers


def _order(methods: Iterable[str]) -> list[str]:
    ms = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in ms]
    return known + sorted(m for m in ms if m not in METHOD_ORDER)


def _fmt(r: dict, digits: int = 4) -> str:
    if r.get("n", 1) > 1:
        return f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
    return f"{r['mean']:.{digits}f}"


def kshot_table(rows: Sequence[dict], dataset: str, metric: str = "ndcg@10") -> str:
    """Markdown table: one row per method, one column per k (mean ± std over seeds)."""
    sel = [r for r in rows if r["dataset"] == dataset and r["metric"] == metric and KSHOT.match(r["protocol"])]
    if not sel:
        return ""
    ks = sorted({int(KSHOT.match(r["protocol"]).group(1)) for r in sel})
    cell = {(r["method"], int(KSHOT.match(r["protocol"]).group(1))): r for r in sel}
    lines = [f"| method | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for m in _order(r["method"] for r in sel):
        lines.append(f"| {m} | " + " | ".join(_fmt(cell[(m, k)]) if (m, k) in cell else "–" for k in ks) + " |")
    return "\n".join(lines)


def simple_table(rows: Sequence[dict], dataset: str, protocol: str, metrics: Sequence[str],
                 digits: int = 4) -> str:
    sel = [r for r in rows if r["dataset"] == dataset and r["protocol"] == protocol]
    if not sel:
        return ""
    cell = {(r["method"], r["metric"]): r for r in sel}
    metrics = [m for m in metrics if any(r["metric"] == m for r in sel)]
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for m in _order(r["method"] for r in sel):
        if not any((m, x) in cell for x in metrics):
            continue  # e.g. popularity in the size table
        lines.append(f"| {m} | " + " | ".join(_fmt(cell[(m, x)], digits) if (m, x) in cell else "–"
                                              for x in metrics) + " |")
    return "\n".join(lines)


def plot_kshot(rows: Sequence[dict], dataset: str, path, metric: str = "ndcg@10") -> Optional[Path]:
    """PNG of ``metric`` against k per method with std error bars; None when there is no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["dataset"] == dataset and r["metric"] == metric and KSHOT.match(r["protocol"])]
    if not sel:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = _order(r["method"] for r in sel)
    for i, m in enumerate(methods):
        pts = sorted((int(KSHOT.match(r["protocol"]).group(1)), r["mean"], r["std"]) for r in sel
                     if r["method"] == m)
        ks, mean, std = zip(*pts)
        off = (i - len(methods) / 2) * 0.035  # spread the error bars a little
        ax.errorbar([k + off for k in ks], mean, yerr=std, marker="o", capsize=3, label=m,
                    linestyle="--" if m in ("popularity", "zero-shot") else "-")
    ax.set_xlabel("k (support interactions per cold user)")
    ax.set_ylabel(metric.upper().replace("@", "@"))
    ax.set_title(f"{dataset}: cold-start users, {metric} vs k (mean ± std over seeds)")
    ax.set_xticks(sorted({int(KSHOT.match(r['protocol']).group(1)) for r in sel}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(result_files: Sequence, out_dir, metric: str = "ndcg@10") -> list[Path]:
    """Write adaptation_report.md and the k-shot PNGs into ``out_dir``; return the paths."""
    rows, headers = load_results(result_files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    md = ["# Few-shot adaptation results", ""]
    for h in headers:
        md.append(f"- `{h['benchmark']}`: `{h['command']}` ({h['date']}, {h['machine']}, commit {h['git_commit']})")
    md.append("")
    for ds in sorted({r["dataset"] for r in rows}):
        md += [f"## {ds}", ""]
        for met in (metric, "hr@10"):
            t = kshot_table(rows, ds, met)
            if t:
                md += [f"### Cold-start users: {met} (full ranking, support items excluded)", "", t, ""]
        png = plot_kshot(rows, ds, out / f"fewshot_{ds}_{metric.replace('@', '')}.png", metric)
        if png:
            written.append(png)
            md += [f"![{ds} {metric} vs k]({png.name})", ""]
        sized = sorted({int(KSHOT.match(r["protocol"]).group(1)) for r in rows if r["dataset"] == ds
                        and r["metric"] == "size_kb" and KSHOT.match(r["protocol"])})
        if sized:
            k = 5 if 5 in sized else sized[-1]
            t = simple_table(rows, ds, f"coldstart-k{k}", ["size_kb", "seconds"], digits=1)
            md += [f"### Adapter size (KB) and adaptation seconds per cohort (k={k})", "", t, ""]
        for proto, title, mets in (
            ("coldstart-items", "Cold-start items (events whose target is a cold item)",
             ["hr@10", "ndcg@10", "seconds", "size_kb"]),
            ("forgetting", "Continual re-fine-tuning: warm users before/after (forgetting = after / before)",
             ["ndcg@10", "ratio", "seconds"]),
            ("metarec", "RecBole-MetaRec protocol (10 query items per test user)",
             ["ndcg@5", "precision@5", "mrr@5", "graded_ndcg@5", "rmse"]),
        ):
            t = simple_table(rows, ds, proto, mets)
            if t:
                md += [f"### {title}", "", t, ""]
                if proto == "metarec":
                    md += [PUBLISHED_METAREC, ""]
    path = out / "adaptation_report.md"
    path.write_text("\n".join(md) + "\n")
    written.insert(0, path)
    return written
