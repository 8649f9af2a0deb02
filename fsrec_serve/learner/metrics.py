"""The learner's Prometheus metrics (one registry per learner; served on ``metrics_port``).

Names are what ``docker/prometheus-rules.yml`` alerts on: lag and failed re-fine-tunes page.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class LearnerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("fsrec_learner_events", "events applied to user histories", registry=r)
        self.lag = Gauge("fsrec_learner_lag_seconds", "age of the oldest event not applied yet (0 = none)", registry=r)
        self.pending = Gauge("fsrec_learner_pending_events", "events stored but not applied yet", registry=r)
        self.fit_seconds = Histogram("fsrec_learner_fit_seconds", "wall time of one vectorized per-user fit",
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.users_refit = Counter("fsrec_learner_users_refit", "user parameters written", registry=r)
        self.refines = Counter("fsrec_learner_refines", "re-fine-tunes by outcome (rolled-out, refused, failed)",
                               ["outcome"], registry=r)
        self.store_errors = Counter("fsrec_learner_store_errors", "store calls that failed (then retried)", registry=r)
        self.fingerprint = Gauge("fsrec_learner_model_info", "the model the learner fits for (value 1)",
                                 ["fingerprint"], registry=r)
        for outcome in ("rolled-out", "refused", "failed"):
            self.refines.labels(outcome)  # every outcome exported from the start (alerts see 0)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start /metrics on ``host``:``port`` (0 = any free port); returns the port. The default
        host is loopback only; a container binds "0.0.0.0" so that Prometheus can reach it."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])

    def set_model(self, fingerprint: str) -> None:
        self.fingerprint.clear()
        self.fingerprint.labels(fingerprint).set(1)
