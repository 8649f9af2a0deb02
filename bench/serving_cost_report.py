"""Serving cost, the notes of a run: the goal ratios and the knob variants in words."""

from __future__ import annotations

CPU = "cpu_ms_per_seq"


def _cpu(rows: list[dict], ds: str, method: str, conc: int) -> float | None:
    for r in rows:
        if (r["dataset"], r["method"], r["metric"], r["concurrency"]) == (ds, method, CPU, conc):
            return float(r["mean"])
    return None


def ratio_lines(rows: list[dict], conc: int) -> list[str]:
    """Per data set: varlen ÷ ORT, varlen ÷ padded, varlen ÷ FastAPI, by-user ÷ varlen (CPU/seq)."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        v = _cpu(rows, ds, "triton-cpu-varlen", conc)
        parts = []
        for den, label in (("ort-inprocess", "÷ ORT"), ("triton-cpu", "÷ padded"), ("fastapi-torch", "÷ FastAPI")):
            b = _cpu(rows, ds, den, conc)
            if v and b:
                parts.append(f"{label} {v / b:.2f}")
        u = _cpu(rows, ds, "triton-user", conc)
        if v and u:
            parts.append(f"by-user ÷ varlen {u / v:.2f}")
        if v:
            out.append(f"{ds}, CPU per sequence at concurrency {conc}: varlen {v:.3f} ms; " + ", ".join(parts))
    return out


def knob_lines(rows: list[dict], variants: list[dict], conc: int) -> list[str]:
    """Each knob variant's CPU/seq and throughput against the default in the same run."""
    if not variants:
        return []
    ds = variants[0]["dataset"]
    base = {r["metric"]: r["mean"] for r in rows if (r["dataset"], r["method"], r["concurrency"])
            == (ds, "triton-cpu-varlen", conc)}
    by: dict = {}
    for r in variants:
        by.setdefault(r["method"], {})[r["metric"]] = r["mean"]
    parts = [f"{m.removeprefix('triton-cpu-varlen-')} {v[CPU] / base[CPU] - 1:+.0%} CPU/seq, "
             f"{v['throughput_rps'] / base['throughput_rps'] - 1:+.0%} throughput"
             for m, v in sorted(by.items(), key=lambda kv: kv[1][CPU])]
    return [f"knobs ({ds}, varlen, concurrency {conc}; one change each vs the default server's "
            f"{base[CPU]:.3f} ms, rows in `variants`): " + "; ".join(parts)]


def summary_notes(rows: list[dict], variants: list[dict], cfg) -> list[str]:
    method = ("server CPU = utime+stime from /proc of tritonserver and its python-backend stubs (the FastAPI "
              "server process; this process for ORT) over the load run ÷ sequences served (Triton's "
              f"nv_inference_count); load: perf_analyzer 2.51 gRPC, --input-data of real histories, "
              f"{cfg.load.interval_ms} ms windows; shared 2-core machine: load averages in each row")
    return ratio_lines(rows, cfg.concurrency) + knob_lines(rows, variants, cfg.concurrency) + [method]
