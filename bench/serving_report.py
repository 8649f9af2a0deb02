"""Serving benchmark, part 3 of 3: result rows (BENCH_SCHEMA), goal ratios, the markdown table.

Goals (issue 12), each judged on the same traffic in the same run:

- ``triton-cpu-varlen`` / ``triton-cpu`` throughput >= 1.5 (ml-100k), >= 3 (beauty), with the
  varlen p99 no worse than the padded one;
- ``triton-cpu-varlen`` / ``fastapi-torch`` throughput >= 5 at equal or lower p99;
- ``triton-cpu-varlen`` / ``ort-inprocess`` (the same batch) >= 0.90.
"""

from __future__ import annotations

METRICS = ("throughput_rps", "p50_ms", "p99_ms")
CPU = "server_cpu_ms_per_req"  # CPU of the server (process group) per request: robust to a shared machine
GOALS = {  # (numerator, denominator) -> {dataset or "*": goal}, whether p99 must be no worse
    ("triton-cpu-varlen", "triton-cpu"): ({"ml-100k": 1.5, "beauty": 3.0}, True),
    ("triton-cpu-varlen", "fastapi-torch"): ({"*": 5.0}, True),
    ("triton-cpu-varlen", "ort-inprocess"): ({"*": 0.90}, False),
}


def result_rows(points: dict, dataset: str) -> list[dict]:
    """{(method, concurrency): point} -> BENCH_SCHEMA rows (one per metric)."""
    rows = []
    for (method, conc), p in sorted(points.items()):
        extra = {"concurrency": conc}
        if p.get("batch"):
            extra["batch"] = p["batch"]
        if p.get("mean_batch") is not None:
            extra["mean_batch"] = round(float(p["mean_batch"]), 2)
        if p.get("errors"):
            extra["errors"] = p["errors"]
        for m in METRICS + ((CPU,) if p.get(CPU) is not None else ()):  # "mean" = median of the rounds
            rows.append({"dataset": dataset, "protocol": "serving", "method": method, "metric": m,
                         "mean": round(float(p[m]), 3), "std": round(float(p.get(f"{m}_std", 0.0)), 3),
                         "n": int(p.get("n", 1)), **extra})
    return rows


def goal_rows(points: dict, dataset: str) -> tuple[list[dict], list[str]]:
    """Ratio rows (metric ``ratio``) for every goal that both sides were measured for, at the
    highest concurrency; and one line per goal: met / MISSED with the numbers."""
    rows, lines = [], []
    for (num, den), (goals, p99_rule) in GOALS.items():
        goal = goals.get(dataset, goals.get("*"))
        pairs = [(c, points[(num, c)], points[(den, c2)]) for (m, c) in points if m == num
                 for (m2, c2) in points if m2 == den and c2 == c]
        if goal is None or not pairs:
            continue
        conc, a, b = max(pairs, key=lambda t: t[0])
        ratio = a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else float("inf")
        p99_ok = (not p99_rule) or a["p99_ms"] <= b["p99_ms"]
        met = ratio >= goal and p99_ok
        rows.append({"dataset": dataset, "protocol": "serving", "method": f"{num}/{den}", "metric": "ratio",
                     "mean": round(ratio, 3), "std": 0.0, "n": 1, "concurrency": conc, "goal": goal,
                     "met": bool(met), "p99_ms": [round(a["p99_ms"], 2), round(b["p99_ms"], 2)], "basis": "throughput"})
        if a.get(CPU) and b.get(CPU):  # the same comparison in CPU per request (b's / a's)
            cpu_ratio = b[CPU] / a[CPU]
            rows.append({**rows[-1], "mean": round(cpu_ratio, 3), "met": bool(cpu_ratio >= goal and p99_ok),
                         "basis": "cpu_per_request"})
            lines.append(f"{dataset}: {num} / {den} in server CPU per request: {b[CPU]:.2f} / {a[CPU]:.2f} ms = "
                         f"{cpu_ratio:.2f}x (goal >= {goal:g}): {'met' if cpu_ratio >= goal and p99_ok else 'MISSED'}")
        why = "" if p99_ok else f", p99 {a['p99_ms']:.1f} > {b['p99_ms']:.1f} ms"
        lines.append(f"{dataset}: {num} / {den} throughput {ratio:.2f}x at concurrency {conc} (goal >= {goal:g}"
                     f"{' with p99 no worse' if p99_rule else ''}; p99 {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms)"
                     f": {'met' if met else 'MISSED'}{why}")
    return rows, lines


def markdown_table(rows: list[dict]) -> str:
    """One line per (dataset, method, concurrency): throughput, p50, p99."""
    table: dict = {}
    for r in rows:
        if r["metric"] in METRICS:
            table.setdefault((r["dataset"], r["method"], r["concurrency"]), {})[r["metric"]] = r["mean"]
    out = ["| dataset | method | concurrency | users/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for (ds, m, c), v in sorted(table.items()):
        out.append(f"| {ds} | {m} | {c} | {v.get('throughput_rps', 0):.0f} | {v.get('p50_ms', 0):.2f} | "
                   f"{v.get('p99_ms', 0):.2f} |")
    return "\n".join(out) + "\n"
