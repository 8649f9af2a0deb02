"""``fsrec learn``: the online learner (a long-running worker)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

DEFAULT_LEARNER_METRICS_PORT = 9108  # the learner's /metrics (docker/compose.yaml, k8s/learner.yaml, prometheus.yml)


def add_parsers(sub) -> None:
    p = sub.add_parser("learn", help="the online learner: events -> per-user parameters, periodic re-fine-tune")
    p.add_argument("--model-dir", required=True,
                   help="save_pretrained folder of the served model (its fingerprint is the served version's)")
    p.add_argument("--store", default=None, help="store URL (default $FSREC_STORE, else the embedded SQLite file)")
    p.add_argument("--group", default="learner", help="consumer group; learners in one group split the events")
    p.add_argument("--fit-interval", type=float, default=1.0, help="seconds between per-user fits (default 1)")
    p.add_argument("--window", type=int, default=20, help="newest items per user the parameters see (default 20)")
    p.add_argument("--context", choices=["window", "history"], default="window",
                   help="window: the newest --window items are the support; history: they are the targets, "
                        "each with its full prefix (cheaper online: one encoder pass per event)")
    p.add_argument("--per-user-lrs", type=float, nargs="+", default=[0.1],
                   help="learning rates the per-user fit tries (default 0.1; more = slower refits)")
    p.add_argument("--per-user-steps", type=int, nargs="+", default=[10, 25],
                   help="step checkpoints of the per-user fit (default 10 25; the largest bounds the cost)")
    p.add_argument("--refine-every-events", type=int, default=0, help="re-fine-tune after N events (0 = off)")
    p.add_argument("--refine-every", type=float, default=0.0, help="re-fine-tune every N seconds (0 = off)")
    p.add_argument("--server", default=None, help="Triton gRPC address to roll re-fine-tuned versions out to")
    p.add_argument("--repository", default=None, help="the folder that tritonserver reads (with --server)")
    p.add_argument("--work-dir", default="runs/learner", help="checkpoints and exports (default runs/learner)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_LEARNER_METRICS_PORT,
                   help=f"Prometheus /metrics port (default {DEFAULT_LEARNER_METRICS_PORT}; -1 = off)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address /metrics binds (default 127.0.0.1; 0.0.0.0 in a container, for Prometheus)")
    p.add_argument("--partitions", type=int, default=None,
                   help="event partitions of the redis store (default: the store URL's ?partitions=N, else 1); "
                        "must equal the writers' count: prefer ?partitions=N in the shared FSREC_STORE URL")
    p.add_argument("--partition", type=int, default=None,
                   help="the one partition this learner owns, 0..N-1 (default: all); one learner per partition")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after N seconds (default: run until stopped)")
    p.set_defaults(func=_learn)


def _learn(args) -> int:
    from ..adaptation.peruser import PerUserConfig
    from ..learner import Learner, LearnerConfig

    cfg = LearnerConfig(model_dir=Path(args.model_dir), store=args.store, group=args.group,
                        fit_interval_s=args.fit_interval, window=args.window, context=args.context,
                        per_user=PerUserConfig(lrs=tuple(args.per_user_lrs), steps=tuple(args.per_user_steps)),
                        refine_every_events=args.refine_every_events, refine_every_s=args.refine_every,
                        server_url=args.server, repository=Path(args.repository) if args.repository else None,
                        work_dir=Path(args.work_dir), metrics_port=args.metrics_port,
                        metrics_host=args.metrics_host, partitions=args.partitions, partition=args.partition)
    learner = Learner(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"learner for model {learner.fingerprint} on {learner.store.url} (group {cfg.group}); metrics "
          f"{'off' if learner.metrics_port is None else f'http://{cfg.metrics_host}:{learner.metrics_port}/metrics'}",
          flush=True)
    stats = learner.run(stop, max_seconds=args.max_seconds)
    learner.close()
    print(f"stopped: {stats.events} events applied, {stats.users_refit} user parameters written, "
          f"{len(stats.refines)} re-fine-tunes", flush=True)
    return 0
