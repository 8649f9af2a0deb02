"""``fsrec loadtest``: Locust, headless, against a server (local unless --allow-remote-host);
exit 1 when the gate fails."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..contract import DEFAULT_REPOSITORY


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "loadtest",
        help="run the Locust load test against a local server and apply the release gate",
        description="Run loadtests/locustfile.py headless (through Locust's CLI, in a subprocess) "
        "against a server (127.0.0.1 unless --allow-remote-host), write Locust's CSV and HTML reports, "
        "and exit 1 when p95/p99 latency or the failure ratio exceed the gate's thresholds.",
    )
    p.add_argument("--host", default=None,
                   help="server address HOST:PORT (default: 127.0.0.1 with the protocol's port from the "
                   "settings); hosts other than 127.0.0.1/localhost need --allow-remote-host")
    p.add_argument("--allow-remote-host", action="store_true",
                   help="opt-in: load-test a host other than 127.0.0.1/localhost (a staging server you may load)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="client protocol")
    p.add_argument("--users", "-u", type=int, default=None, help="concurrent users (default: the gate's)")
    p.add_argument("--spawn-rate", "-r", type=float, default=None, help="users started per second")
    p.add_argument("--run-time", "-t", default=None, help="duration, e.g. 10s, 2m (default: the gate's)")
    p.add_argument("--k-mix", default=None, help="top-k mix, e.g. '10:0.8,20:0.15,50:0.05'")
    p.add_argument("--think-time", type=float, default=None, help="seconds a user waits between requests")
    p.add_argument("--gate", default=None,
                   help="thresholds file (YAML; default: the gate.yaml shipped in loadtests/); 'none' = write "
                   "the reports, judge nothing")
    p.add_argument("--report-dir", default="loadtests/reports", help="where CSV/HTML/gate.json go")
    p.add_argument("--histories", default=None,
                   help="JSON histories file (raw item ids); default: written from the held-out "
                   "users of --dataset")
    p.add_argument("--dataset", default="ml-100k", help="data set of the histories")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")
    p.add_argument("--model-name", default=None, help="Triton model name (default: the settings')")
    p.add_argument("--repository", default=None,
                   help="the served model repository (the client reads item_map.json and the "
                   f"model's limits from it); default: ./{DEFAULT_REPOSITORY} when it exists")
    p.add_argument("--item-map", default=None, help="the served model's item_map.json (instead of --repository)")
    p.add_argument("--retries", type=int, default=0,
                   help="client retries on unavailable/overloaded (default 0: every error counts)")
    p.add_argument("--request-timeout", type=float, default=10.0, help="client timeout per request (s)")
    p.add_argument("--locustfile", default=None, help="Locust file (default: loadtests/locustfile.py)")
    p.add_argument("--seed", type=int, default=0, help="traffic seed")
    p.add_argument("--timeout", type=float, default=None, help="kill Locust after this many seconds")
    from ..data.args import add_data_arguments

    add_data_arguments(p)  # histories from your own log: --data PATH --user-col ... (or a spec file)
    p.set_defaults(func=_loadtest)


def _loadtest(args: argparse.Namespace) -> int:
    from ..contract import DEFAULT_HOST
    from ..operations.loadtest import (
        DEFAULT_GATE,
        DEFAULT_LOCUSTFILE,
        LoadTestConfig,
        run_loadtest,
    )
    from ..settings import get_settings

    s = get_settings(data_dir=args.data_dir)
    dataset = args.dataset
    if args.data:  # own log: its spec travels as a file (load_dataset reads spec files)
        from ..data import data_source_from_args

        dataset = str(Path(args.report_dir) / "data_spec.json")
        Path(args.report_dir).mkdir(parents=True, exist_ok=True)
        data_source_from_args(args).save(dataset)
    host = args.host or f"{DEFAULT_HOST}:{s.grpc_port if args.protocol == 'grpc' else s.http_port}"
    gate = None if str(args.gate).lower() == "none" else Path(args.gate) if args.gate else DEFAULT_GATE
    repository = Path(args.repository) if args.repository else None
    if repository is None and args.item_map is None and Path(DEFAULT_REPOSITORY).is_dir():
        repository = Path(DEFAULT_REPOSITORY)
    res = run_loadtest(LoadTestConfig(
        host=host, allow_remote=args.allow_remote_host, protocol=args.protocol, gate=gate, report_dir=Path(args.report_dir),
        users=args.users, spawn_rate=args.spawn_rate, run_time=args.run_time, k_mix=args.k_mix,
        think_time_s=args.think_time, histories=Path(args.histories) if args.histories else None,
        dataset=dataset, data_dir=s.data_dir, model_name=args.model_name or s.model_name,
        repository=repository, item_map=Path(args.item_map) if args.item_map else None,
        retries=args.retries, request_timeout_s=args.request_timeout,
        locustfile=Path(args.locustfile) if args.locustfile else DEFAULT_LOCUSTFILE,
        seed=args.seed, timeout_s=args.timeout,
    ))
    print(f"load test against {res.host} ({args.protocol})")
    agg = res.aggregated()
    if agg is not None:
        print(f"{agg.requests} requests, {agg.failures} failed ({agg.failure_ratio:.2%}), "
              f"{agg.rps:.1f} req/s, p50 {agg.pct('50%')} ms, p95 {agg.pct('95%')} ms, "
              f"p99 {agg.pct('99%')} ms")
    print(f"reports: {res.stats_csv}, {res.html}")
    if res.gate is None:
        print("no gate file: nothing judged")
        return 0
    print(res.gate.summary(), file=sys.stdout if res.gate.passed else sys.stderr)
    return 0 if res.gate.passed else 1
