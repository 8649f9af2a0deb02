"""Small PNG plots for BENCHMARKS.md: k-shot curves and latency against load.

Written under bench/results as ``plot-<family>-<name>.png`` only when the bytes change (the
PNG metadata carries no date, so the same JSON gives the same file). Without matplotlib the
plots that already exist are still linked, and no new ones are made.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

KSHOT = re.compile(r"^(.*)-k(\d+)$")
DPI = 72  # small files: about 20-40 KB each


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    data = buf.getvalue()
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kshot(rows: list[tuple[str, dict]], dataset: str, path: Path, metric: str = "ndcg@10",
          who: str = "cold-start users") -> bool:
    """``metric`` against k per method (error bars = std over seeds); False without data."""
    pts: dict[str, list] = {}
    stems = {s for s, r in rows if r.get("dataset") == dataset}
    for stem, r in rows:
        m = KSHOT.match(r.get("protocol", ""))
        if m and r.get("dataset") == dataset and r.get("metric") == metric and "/" not in r["method"]:
            label = r["method"] + (f" ({stem})" if len(stems) > 1 else "")  # one line per run
            pts.setdefault(label, []).append((int(m.group(2)), r["mean"], r.get("std", 0.0)))
    ks = sorted({k for v in pts.values() for k, _, _ in v})
    if len(ks) < 2:
        return False
    plt = _pyplot()
    if plt is None:
        return path.exists()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method in sorted(pts):
        k, mean, std = zip(*sorted(pts[method]))
        ax.errorbar(k, mean, yerr=std, marker="o", capsize=2, label=method,
                    linestyle="--" if method.split(" ")[0] in ("popularity", "zero-shot", "stale") else "-")
    ax.set(xlabel="k (first interactions of the user as support)", ylabel=metric, xticks=ks,
           title=f"{dataset}: {who}, {metric} against k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def latency(rows: list[tuple[str, dict]], stem: str, path: Path) -> bool:
    """p99 latency against throughput, one line per method over its load points."""
    pts: dict[str, dict] = {}
    for s, r in rows:
        if s != stem or "/" in r["method"] or r["metric"] not in ("throughput_rps", "p99_ms"):
            continue
        load = r.get("concurrency", r.get("batch"))
        if load is None:
            continue
        key = (r["method"], r.get("dataset"), r.get("load_generator", ""))
        pts.setdefault(key, {}).setdefault(load, {})[r["metric"]] = r["mean"]
    lines = {k: [(v["throughput_rps"], v["p99_ms"]) for c, v in sorted(d.items()) if len(v) == 2]
             for k, d in pts.items()}  # in order of increasing load
    lines = {k: v for k, v in lines.items() if v}
    if not lines:
        return False
    plt = _pyplot()
    if plt is None:
        return path.exists()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for (method, ds, gen), v in sorted(lines.items(), key=lambda kv: tuple(map(str, kv[0]))):
        x, y = zip(*v)
        label = method + (f" ({ds})" if len({k[1] for k in lines}) > 1 else "") + (f" [{gen}]" if gen else "")
        ax.plot(x, y, marker="o", label=label)
    ax.set(xlabel="throughput (requests/s)", ylabel="p99 latency (ms)", yscale="log",
           title=f"{stem}: p99 against throughput as the load grows (concurrency or batch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def for_family(family: str, rows: list[tuple[str, dict]], results_dir: Path, make: bool) -> list[Path]:
    """The plots of one protocol table (made when ``make``, else only those already there)."""
    wanted: list[tuple[Path, callable]] = []
    if family in ("coldstart", "arrivals"):
        for ds in sorted({r.get("dataset") for _, r in rows if r.get("dataset")}):
            p = Path(results_dir) / f"plot-{family}-{ds}.png"
            who = "users who arrive after training" if family == "arrivals" else "cold-start users"
            wanted.append((p, lambda p=p, ds=ds, who=who: kshot(rows, ds, p, who=who)))
    if family == "serving":
        for stem in dict.fromkeys(s for s, _ in rows):
            p = Path(results_dir) / f"plot-latency-{stem}.png"
            wanted.append((p, lambda p=p, stem=stem: latency(rows, stem, p)))
    out = []
    for p, make_it in wanted:
        if (make and make_it()) or (not make and p.exists()):
            out.append(p)
    return out
