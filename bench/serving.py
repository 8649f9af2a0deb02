"""Serving benchmark: real-length Triton vs padded Triton vs FastAPI + PyTorch vs in-process ORT.

    nice -n 10 python -m bench.serving                         # both data sets (~6 min on 2 cores)
    python -m bench.serving --datasets ml-100k --seconds 3      # shorter
    python -m bench.serving tune                                # the cpu defaults (instances, delay, buckets)

One run, the same traffic for every method (the real history lengths of ML-100K's cold users,
and separately of Beauty's users; one user per request, closed loop):
``triton-cpu-varlen``, ``triton-cpu`` (padded), ``fastapi-torch``, ``ort-inprocess``. The parts:
:mod:`bench.serving_load` (the one closed-loop load function and the load process),
:mod:`bench.serving_measure` (servers, traffic, points), :mod:`bench.serving_report` (rows,
goals, table). Writes ``bench/results/serving.json`` (BENCH_SCHEMA) and ``serving.md``; ``tune``
writes ``serving_tune.json``. The load generator shares the cores with the servers: absolute
numbers are lower bounds; compare methods within one run (the load average is in the notes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

from .common import RESULTS_DIR, write_results
from .serving_measure import (
    ServingConfig,
    load_traffic,
    measure_triton,
    prepare,
    run_dataset,
)
from .serving_report import goal_rows, markdown_table, result_rows

# the tune sweep (ml-100k, triton-cpu-varlen): one change from the default per variant
TUNE_VARIANTS = {
    "default": {},
    "1x2threads": {"instance_count": 1, "intra_op_threads": 2},
    "delay100us": {"max_queue_delay_us": 100},
    "delay2000us": {"max_queue_delay_us": 2000},
    "buckets-none": {"length_buckets": []},
    "buckets-fine": {"length_buckets": [8, 16, 24, 32, 48, 64, 96, 128, 160]},
    "preferred8-16": {"preferred_batch_sizes": [8, 16]},
}


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.1f}/{b:.1f}/{c:.1f}"


def run(cfg: ServingConfig, command: str, out: Path) -> Path:
    t0 = time.perf_counter()
    cfg.notes.append(f"load average (1/5/15 min) at start: {_load()}; the machine's 2 cores are shared "
                     "with other jobs")
    rows, lines = [], []
    for ds in cfg.datasets:
        points, _ = run_dataset(ds, cfg)
        rows += result_rows(points, ds)
        g_rows, g_lines = goal_rows(points, ds)
        rows += g_rows
        lines += g_lines
        cfg.notes.append(f"load average after {ds}: {_load()}")
    cfg.notes += lines
    cfg.notes.append("models: random init with each data set's recommended configuration (speed does not "
                     "depend on weights); Triton: the generated cpu repository (2 instances x 1 ORT thread); "
                     f"load: Python gRPC/HTTP client threads in a separate process; {cfg.seconds:g} s measured "
                     f"after {cfg.warmup:g} s warm-up per point, {cfg.rounds} interleaved rounds (median; std "
                     f"over rounds); full run {time.perf_counter() - t0:.0f} s")
    path = write_results("serving", command, rows, extra={"notes": cfg.notes}, path=out)
    out.with_suffix(".md").write_text(markdown_table(rows) + "\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    return path


def tune(cfg: ServingConfig, command: str, out: Path) -> Path:
    """Each TUNE_VARIANTS change alone on ml-100k traffic, triton-cpu-varlen at the highest
    concurrency: the evidence for the defaults in exporters/triton_config.py."""
    ds = cfg.datasets[0]
    work = Path(cfg.workdir) / ds
    work.mkdir(parents=True, exist_ok=True)
    tr = load_traffic(ds, cfg.max_users, cfg.seed)
    _, export = prepare(tr, work, cfg.seed)
    hist_file = work / "histories.json"
    hist_file.write_text(__import__("json").dumps(tr.histories))
    conc = max(cfg.concurrency)
    rows, notes = [], [f"load average at start: {_load()}"]
    for name, over in TUNE_VARIANTS.items():
        pts = measure_triton(tr, export, work, cfg, hist_file, spec_overrides=over,
                             pads={"triton-cpu-varlen": 0}, concurrency=(conc,))
        p = pts[("triton-cpu-varlen", conc)]
        for r in result_rows({(f"triton-cpu-varlen-{name}", conc): p}, ds):
            rows.append({**r, "variant": over})
        notes.append(f"{name} {over}: {p['throughput_rps']:.0f} users/s, p99 {p['p99_ms']:.1f} ms, "
                     f"mean batch {p.get('mean_batch') or 0:.1f}")
    notes.append(f"load average at end: {_load()}")
    return write_results("serving_tune", command, rows, extra={"notes": notes}, path=out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv.pop(0) if argv and argv[0] in ("run", "tune") else "run"
    ap = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(ServingConfig.datasets))
    ap.add_argument("--concurrency", type=int, nargs="+", default=list(ServingConfig.concurrency))
    ap.add_argument("--seconds", type=float, default=ServingConfig.seconds)
    ap.add_argument("--warmup", type=float, default=ServingConfig.warmup)
    ap.add_argument("--rounds", type=int, default=ServingConfig.rounds, help="repeats per point (median)")
    ap.add_argument("--methods", nargs="+", default=list(ServingConfig.methods))
    ap.add_argument("--max-users", type=int, default=ServingConfig.max_users)
    ap.add_argument("--workdir", default=ServingConfig.workdir)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/serving[_tune].json)")
    args = ap.parse_args(argv)
    cfg = ServingConfig(datasets=tuple(args.datasets), concurrency=tuple(args.concurrency), seconds=args.seconds,
                        warmup=args.warmup, rounds=args.rounds, methods=tuple(args.methods), max_users=args.max_users,
                        workdir=args.workdir)
    command = "python -m bench.serving " + shlex.join([sub] + (argv or []))
    default_out = RESULTS_DIR / ("serving_tune.json" if sub == "tune" else "serving.json")
    out = Path(args.out) if args.out else default_out
    path = (tune if sub == "tune" else run)(dataclasses.replace(cfg), command, out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
