"""Shared helpers for benchmarks: the results file format of shared/BENCH_SCHEMA.md."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_description() -> str:
    """'2 cores x86_64, no GPU' style description of this machine."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        gpu = None
    cores = os.cpu_count() or 0
    return f"{cores} cores {platform.machine()}, " + (f"GPU {gpu}" if gpu else "no GPU")


def git_commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True
        ).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def summarize(values, **fields) -> dict:
    """mean/std/n of repeated measurements, merged with the identifying fields."""
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {**fields, "mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def write_results(name: str, command: str, results: list[dict], machine: str | None = None,
                  extra: dict | None = None, path: Path | None = None) -> Path:
    """Write bench/results/<name>.json in the shared schema and return its path."""
    out = {
        "benchmark": name,
        "command": command,
        "date": _dt.date.today().isoformat(),
        "machine": machine or machine_description(),
        "git_commit": git_commit(),
        "results": results,
    }
    if extra:
        out.update(extra)
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path
