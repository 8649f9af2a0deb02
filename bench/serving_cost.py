"""Serving cost per sequence, measured where it is spent: server CPU, perf_analyzer as the load.

    bash scripts/perf_analyzer.sh                     # once: perf_analyzer into ~/.cache
    nice -n 5 python -m bench.serving_cost            # both data sets + the knobs
    python -m bench.serving_cost --datasets ml-100k --no-knobs --interval-ms 2000   # shorter

Methods, on the traffic of :mod:`bench.serving_measure` (the real histories of ML-100K's cold
users; Beauty's users), one sequence per request:

- ``triton-cpu-varlen`` / ``triton-cpu``: tritonserver on the generated ``cpu`` repository,
  each history at its own length / left-padded to max_seq_len; perf_analyzer (C++, gRPC) sends
  the real histories (``--input-data``);
- ``triton-user``: ``fsrec_user`` (user id -> SQLite store lookup -> in-process ranking), the
  same histories stored as the users' events, perf_analyzer sending user ids (a BYTES input);
- ``ort-inprocess``: ONNX Runtime in this process, the python model's session options,
  bucketing and padding, 16 histories per call: the floor a server adds to;
- ``fastapi-torch``: bench/fastapi_server.py, driven by the Python closed loop (it does not
  speak the KServe v2 protocol perf_analyzer needs).

``cpu_ms_per_seq`` = utime + stime of the server process and all its descendants (the
python-backend stubs) over the load run / the sequences Triton counted (``nv_inference_count``)
or the load answered. The knobs (``--knobs``): each change alone from the shipped cpu defaults,
``triton-cpu-varlen`` at concurrency 16, kept in the JSON's ``variants`` (BENCH_SCHEMA rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .common import RESULTS_DIR, write_results
from .serving_cost_parts import pa_input_data, pa_user_data
from .serving_cost_points import LoadSpec, fastapi_point, ort_point, perf_analyzer_point, seed_store, write_json
from .serving_measure import load_traffic, prepare

METRICS = ("cpu_ms_per_seq", "throughput_rps", "p99_ms")  # one result row each
# the knob variants: one change from the shipped cpu defaults each ("protocol": the wire)
KNOBS = {
    "http": {"protocol": "http"},
    "delay100us": {"max_queue_delay_us": 100},
    "delay2000us": {"max_queue_delay_us": 2000},
    "preferred8-16": {"preferred_batch_sizes": [8, 16]},
    "1x2threads": {"instance_count": 1, "intra_op_threads": 2},
    "1x1thread": {"instance_count": 1},
    "no-spinning": {"allow_spinning": False},
}


@dataclass
class CostConfig:
    datasets: tuple = ("ml-100k", "beauty")  # traffic + model shape of each
    concurrency: int = 16  # the concurrency every method is compared at
    sweep: tuple = (1, 4)  # extra concurrencies of triton-cpu-varlen (first data set)
    max_users: int = 2000  # traffic histories per data set
    seed: int = 0  # model init and traffic seed
    ort_seconds: float = 8.0  # in-process ONNX Runtime loop
    fastapi_seconds: float = 8.0  # FastAPI measured seconds (after 2 s warm-up)
    knobs: bool = True  # run the KNOBS variants (first data set)
    by_user: bool = True  # run triton-user
    workdir: str = "/tmp/fsrec-bench-cost"  # scratch (models, repositories, logs, perf_analyzer files)
    load: LoadSpec = dataclasses.field(default_factory=LoadSpec)  # perf_analyzer settings


def _load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _rows(points: dict, dataset: str) -> list[dict]:
    """{(method, concurrency): point} -> BENCH_SCHEMA rows (one per metric, one run each)."""
    rows = []
    for (method, conc), p in points.items():
        extra = {k: p[k] for k in ("mean_batch", "call_batch", "sequences", "load", "window_s",
                                   "client_cpu_ms_per_seq", "cpu_ms_per_seq_by_process", "cpu_ms_per_seq_by_thread",
                                   "load_avg", "queue_us", "compute_infer_us") if k in p}
        for m in METRICS:
            rows.append({"dataset": dataset, "protocol": "serving", "method": method, "metric": m,
                         "mean": round(float(p[m]), 4), "std": 0.0, "n": 1, "concurrency": conc, **extra})
    return rows


def _triton(work: Path, export: Path, tr, cfg: CostConfig, runs: list, tag: str, over: dict | None = None,
            user_ids: list | None = None) -> dict:
    """One server on a repository with ``over`` changed; the perf_analyzer ``runs``:
    (method, data file, pad-free?, concurrency, wire protocol, model)."""
    from exporters.repository import DEFAULT_SPEC, build_model_repository
    from fsrec_serve.serving import serve

    spec_over = {k: v for k, v in (over or {}).items() if k != "protocol"}
    spec = dataclasses.replace(DEFAULT_SPEC, max_seq_len=int(tr.model_config["max_seq_len"]), **spec_over)
    repo = work / f"repo-{tag}"
    shutil.rmtree(repo, ignore_errors=True)
    build_model_repository(repo, export, spec, target="cpu")
    store = None
    if user_ids is not None:
        from exporters.user_repository import build_user_models, popularity_of

        build_user_models(repo, popularity_of(tr.histories, spec.max_top_k), spec)
        store = str(work / "store.sqlite3")
    points = {}
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=240, store=store,
               log_file=work / f"tritonserver-{tag}.log") as server:
        for method, data, conc, wire, model in runs:
            p = perf_analyzer_point(server, model, data, conc, cfg.load, work / f"pa-{method}-c{conc}.csv", wire)
            p["load_avg"] = _load_avg()
            points[(method, conc)] = p
            print(f"  {method} c{conc}: {p['cpu_ms_per_seq']:.3f} ms CPU/seq, {p['throughput_rps']:.0f}/s, "
                  f"p99 {p['p99_ms']:.1f} ms, batch {p['mean_batch']}", flush=True)
    return points


def run_dataset(ds: str, cfg: CostConfig, first: bool) -> tuple[dict, dict, list]:
    """-> (points, knob points, notes) of one data set."""
    work = Path(cfg.workdir) / ds
    work.mkdir(parents=True, exist_ok=True)
    tr = load_traffic(ds, cfg.max_users, cfg.seed)
    ckpt, export = prepare(tr, work, cfg.seed)
    L, c = int(tr.model_config["max_seq_len"]), cfg.concurrency
    varlen = write_json(work / "pa-varlen.json", pa_input_data(tr.histories, "item_ids"))
    padded = write_json(work / "pa-padded.json", pa_input_data(tr.histories, "item_ids", pad_to=L))
    hist = write_json(work / "histories.json", tr.histories)
    notes = [f"{ds}: {len(tr.histories)} users, mean history {sum(map(len, tr.histories)) / len(tr.histories):.0f} "
             f"items, max_seq_len {L}; load average at start {_load_avg()}"]
    sweep = [("triton-cpu-varlen", varlen, k, "grpc", "fsrec") for k in (cfg.sweep if first else ())]
    runs = sweep + [("triton-cpu-varlen", varlen, c, "grpc", "fsrec"), ("triton-cpu", padded, c, "grpc", "fsrec")]
    print(f"{ds}: triton", flush=True)
    points = _triton(work, export, tr, cfg, runs, "default")
    if cfg.by_user:
        os.environ["FSREC_STATE_DIR"] = str(work / "state")  # the user-key secret shared with the stubs
        (work / "store.sqlite3").unlink(missing_ok=True)
        users = seed_store(str(work / "store.sqlite3"), tr.histories)
        ids = write_json(work / "pa-users.json", pa_user_data(users, "user_id"))
        points.update(_triton(work, export, tr, cfg, [("triton-user", ids, c, "grpc", "fsrec_user")], "user",
                              user_ids=users))
    print(f"{ds}: ort, fastapi", flush=True)
    from exporters.repository import DEFAULT_SPEC

    points[("ort-inprocess", c)] = {**ort_point(export, tr.histories, dataclasses.replace(DEFAULT_SPEC, max_seq_len=L),
                                                16, cfg.ort_seconds), "load_avg": _load_avg()}
    points[("fastapi-torch", c)] = {**fastapi_point(ckpt, work, hist, c, cfg.fastapi_seconds, 2.0),
                                    "load_avg": _load_avg()}
    knob_points: dict = {}
    for name, over in (KNOBS.items() if cfg.knobs and first else ()):
        print(f"{ds}: knob {name}", flush=True)
        p = _triton(work, export, tr, cfg, [("triton-cpu-varlen", varlen, c, over.get("protocol", "grpc"), "fsrec")],
                    f"knob-{name}", over)
        knob_points[(f"triton-cpu-varlen-{name}", c)] = {**p[("triton-cpu-varlen", c)], "variant": over}
    notes.append(f"{ds}: load average at end {_load_avg()}")
    return points, knob_points, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(CostConfig.datasets))
    ap.add_argument("--interval-ms", type=int, default=LoadSpec.interval_ms, help="perf_analyzer window")
    ap.add_argument("--no-knobs", action="store_true", help="skip the knob variants")
    ap.add_argument("--no-by-user", action="store_true", help="skip triton-user")
    ap.add_argument("--workdir", default=CostConfig.workdir)
    ap.add_argument("--out", default=str(RESULTS_DIR / "serving-cost.json"))
    args = ap.parse_args(argv)
    cfg = CostConfig(datasets=tuple(args.datasets), knobs=not args.no_knobs, by_user=not args.no_by_user,
                     workdir=args.workdir, load=LoadSpec(interval_ms=args.interval_ms))
    if not Path(cfg.load.perf_analyzer).exists():
        print(f"{cfg.load.perf_analyzer} is missing: run bash scripts/perf_analyzer.sh", file=sys.stderr)
        return 2
    t0, rows, variants, notes = time.perf_counter(), [], [], []
    for i, ds in enumerate(cfg.datasets):
        points, knob_points, ds_notes = run_dataset(ds, cfg, first=i == 0)
        rows += _rows(points, ds)
        variants += [{**r, "variant": knob_points[(r["method"], r["concurrency"])]["variant"]}
                     for r in _rows(knob_points, ds)]
        notes += ds_notes
    from .serving_cost_report import summary_notes

    notes = summary_notes(rows, variants, cfg) + notes + [f"full run {time.perf_counter() - t0:.0f} s"]
    command = ("python -m bench.serving_cost " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    print(write_results("serving-cost", command, rows, extra={"notes": notes, "variants": variants},
                        path=Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
