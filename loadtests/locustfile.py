"""Locust load test of the fsrec recommender served by Triton, over gRPC or HTTP.

Run it through the release gate (headless, reports, thresholds)::

    fsrec loadtest --host 127.0.0.1:8001 --protocol grpc --repository model_repository/cpu \
        --users 8 --run-time 30s --gate loadtests/gate.yaml --report-dir loadtests/reports

or with Locust directly (same options; the web UI binds 127.0.0.1 only when asked)::

    locust -f loadtests/locustfile.py --host 127.0.0.1:8001 --histories h.json \
        --repository model_repository/cpu GrpcRecommenderUser

Each user is a closed loop over the project's client (``fsrec_serve.client.RecommenderClient``,
``tritonclient`` underneath): pick a real held-out user's history (uniformly, so the requests
follow the real length distribution), pick k from the configured mix, ask for the top k, report
the request to Locust as ``<protocol> / "recommend k=<k>"`` with its response time, the number
of items returned as the response length, and any exception -- including an answer with the
wrong number of items -- as a failure.

Never import torch or transformers here: Locust runs under gevent, and a process that imported
ssl before gevent patched it fails with ``RecursionError``. The histories arrive as a JSON file
of raw item ids (written by ``fsrec_serve.operations.traffic.write_histories``).
"""

from __future__ import annotations

# gRPC must be switched to gevent BEFORE any channel exists, or the users run one at a time
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import logging
import random
import sys
import time
from typing import ClassVar

from locust import User, events, task
from locust.exception import StopUser

from fsrec_serve.client import RecommenderClient
from fsrec_serve.operations.traffic import (
    add_locust_arguments,
    install_final_stats_writer,
    load_histories,
    normalize_host,
    parse_k_mix,
    sample_k,
)

if "torch" in sys.modules:  # pragma: no cover - a guard for future edits
    raise RuntimeError("the locustfile must not import torch (gevent + ssl RecursionError)")

log = logging.getLogger("fsrec.locust")


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    add_locust_arguments(parser)


class Traffic:
    """What every user shares: the histories, the k mix, the options (set once at init)."""

    histories: ClassVar[list[list[str]]] = []
    k_mix: ClassVar[list[tuple[int, float]]] = []
    seed: ClassVar[int] = 0
    users_started: ClassVar[int] = 0


@events.init.add_listener
def _init(environment, **_kw) -> None:
    o = environment.parsed_options
    if o is None:  # library use without the CLI: nothing to configure
        return
    # raises for anything but 127.0.0.1/localhost unless the runner passed the opt-in
    normalize_host(environment.host or "", "grpc", allow_remote=o.allow_remote_host)
    if not o.histories:
        raise SystemExit("--histories is required (fsrec loadtest writes one from the data set)")
    if not (o.repository or o.item_map):
        raise SystemExit("--repository (or --item-map) is required: the client maps raw ids with the "
                         "served model's item_map.json")
    Traffic.histories = load_histories(o.histories)
    Traffic.k_mix = parse_k_mix(o.k_mix)
    Traffic.seed = o.traffic_seed
    install_final_stats_writer(environment)
    log.info("traffic: %d histories, k mix %s", len(Traffic.histories), Traffic.k_mix)


class _RecommenderUser(User):
    abstract = True
    protocol = "grpc"

    def __init__(self, environment):
        super().__init__(environment)
        o = environment.parsed_options
        self.think_time = float(getattr(o, "think_time", 0.0) or 0.0)
        Traffic.users_started += 1
        self.rng = random.Random(Traffic.seed * 100_003 + Traffic.users_started)
        self.client = None

    def wait_time(self) -> float:
        # 0 = closed loop at full speed; else uniform in [0.5, 1.5] x the think time, so users
        # do not march in lockstep
        return self.think_time * (0.5 + self.rng.random()) if self.think_time > 0 else 0.0

    def on_start(self) -> None:
        o = self.environment.parsed_options
        host = normalize_host(self.host or "", self.protocol, allow_remote=o.allow_remote_host)
        self.client = RecommenderClient(
            host, self.protocol, model_name=o.model_name, repository=o.repository or None,
            item_map=o.item_map or None, retries=o.retries, timeout_s=o.request_timeout,
        )
        if not self.client.is_ready():
            self.environment.events.request.fire(
                request_type=self.protocol, name="ready", response_time=0, response_length=0,
                exception=RuntimeError(f"model {o.model_name!r} is not ready on {host}"), context={})
            raise StopUser()

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()

    @task
    def recommend(self) -> None:
        history = self.rng.choice(Traffic.histories)
        k = sample_k(Traffic.k_mix, self.rng)
        exc = None
        n = 0
        t0 = time.perf_counter()
        try:
            rec = self.client.recommend(history, k=k)
            n = len(rec.items)
            if n != k:
                exc = AssertionError(f"asked for {k} items, got {n}")
        except Exception as e:  # noqa: BLE001 - every error is a failed request
            exc = e
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"recommend k={k}",
            response_time=(time.perf_counter() - t0) * 1000.0, response_length=n,
            exception=exc, context={"history_len": len(history)},
        )


class GrpcRecommenderUser(_RecommenderUser):
    """A user calling the recommender over Triton's gRPC endpoint (default port 8001)."""

    protocol = "grpc"


class HttpRecommenderUser(_RecommenderUser):
    """A user calling the recommender over Triton's HTTP endpoint (default port 8000)."""

    protocol = "http"
