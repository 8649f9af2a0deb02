"""Every metric the monitoring queries is really exported: the alert and recording rules
(docker/prometheus-rules.yml), the Grafana dashboard and the prometheus-adapter rule that the
autoscaler reads select only series that a real tritonserver (started by the launcher, so with its
latency summaries) or a real learner's /metrics endpoint exports, with the label values they
select on (model="fsrec", quantile="0.99", outcome="failed", ...). An alert on a missing series
never fires and says nothing; this test is what stops that.

Labels that Prometheus adds when it scrapes (job, instance; namespace, pod in Kubernetes) and the
series Prometheus makes itself (up, ALERTS) are not on any /metrics page and are left out.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from monitoring_queries import all_queries, exposition_samples, scraped_names, selectors

TARGET_LABELS = {"job", "instance", "namespace", "pod"}  # set by Prometheus at scrape time
EVENTS = 12  # events the learner applies before it is scraped


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return r.read().decode("utf-8")


def _value(text: str, name: str, **labels: str) -> float | None:
    for n, have, v in exposition_samples(text):
        if n == name and labels.items() <= have.items():
            return v
    return None


@pytest.fixture(scope="module")
def learner_metrics(e2e_splits, e2e_limits, tmp_path_factory):
    """The /metrics text of a real Learner (this process, free port, SQLite store) after it applied
    EVENTS events of one user and fitted that user."""
    import torch

    from fsrec_serve.learner import Learner, LearnerConfig
    from fsrec_serve.model import FsRecConfig, FsRecModel
    from fsrec_serve.store import Event, UserKeyer, open_store

    tmp = tmp_path_factory.mktemp("monitoring_learner")
    torch.manual_seed(0)
    model = FsRecModel(FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, max_seq_len=e2e_limits.max_seq_len))
    model.item_map = e2e_splits.item_map
    model.save_pretrained(str(tmp / "served"))
    store_url = str(tmp / "store.sqlite3")
    user = UserKeyer().key("monitoring-user")
    items = e2e_splits.loo_train()[0].items[:EVENTS]
    with open_store(store_url) as store:
        store.append([Event(f"ev-{i}", user, int(item), 1_000.0 + i) for i, item in enumerate(items)])
    learner = Learner(LearnerConfig(model_dir=tmp / "served", store=store_url, fit_interval_s=0.0, metrics_port=0,
                                    work_dir=tmp / "work"))
    try:
        learner.run(until_idle=True, max_seconds=60)
        assert learner.metrics_port
        return _scrape(f"http://127.0.0.1:{learner.metrics_port}/metrics")
    finally:
        learner.close()


@pytest.mark.timeout(180)
def test_every_series_the_monitoring_queries_is_exported(server_factory, fsrec_repository, learner_metrics,
                                                          e2e_splits, e2e_limits):
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.idmap import pad_left

    server = server_factory(fsrec_repository, restricted_api_key=e2e_limits.admin_key)
    first = _scrape(server.url_metrics)
    # a loaded model's success counter is there before any client request (the server's own start-up
    # requests at most): FsrecModelNotLoaded fires only while it is absent
    assert _value(first, "nv_inference_request_success", model="fsrec") is not None, first
    before = _value(first, "nv_inference_request_success", model="fsrec")

    x = pad_left([e.history[-e2e_limits.max_seq_len:] for e in e2e_splits.loo_test()[:4]], e2e_limits.max_seq_len)
    with RecommenderClient.for_server(server, "grpc") as client:
        for _ in range(20):
            client.infer_indices(x)
    deadline = time.monotonic() + 10
    while True:  # per-interval metrics (pending requests) refresh every 2 s
        triton = _scrape(server.url_metrics)
        if (_value(triton, "nv_inference_request_success", model="fsrec") or 0) >= before + 20 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _value(triton, "nv_inference_request_success", model="fsrec") >= before + 20

    # the learner really worked: events applied, one user fitted
    assert _value(learner_metrics, "fsrec_learner_events_total") == EVENTS
    assert _value(learner_metrics, "fsrec_learner_users_refit_total") == 1
    assert _value(learner_metrics, "fsrec_learner_fit_seconds_count") >= 1

    samples = {"triton": exposition_samples(triton), "learner": exposition_samples(learner_metrics)}
    exported = {src: {n for n, _, _ in s} for src, s in samples.items()}
    needed = scraped_names(all_queries())
    assert len(needed) >= 20, sorted(needed)
    missing = {n: src for n, src in needed.items() if not any(n in names for names in exported.values())}
    assert not missing, f"series the monitoring queries that no /metrics exports: {missing}"
    for name in needed:  # each from the process it belongs to
        assert name in exported["learner" if name.startswith("fsrec_learner_") else "triton"], name

    # every selector, label matchers included, selects at least one exported sample
    unmatched = []
    for q in all_queries():
        for sel in selectors(q.expr):
            if sel.name not in needed:
                continue  # a recording rule or a series Prometheus makes
            sel = type(sel)(sel.name, tuple(m for m in sel.matchers if m[0] not in TARGET_LABELS))
            if not any(n == sel.name and sel.matches(labels) for s in samples.values() for n, labels, _ in s):
                unmatched.append(f"{q.source}: {sel}")
    assert not unmatched, unmatched

    # the latency summaries the p95/p99 alerts read carry numbers after traffic
    for quantile in ("0.5", "0.95", "0.99"):
        v = _value(triton, "nv_inference_request_summary_us", model="fsrec", quantile=quantile)
        assert v is not None and v > 0, (quantile, v)
    assert re.search(r'^nv_inference_request_failure\{[^}]*reason="BACKEND"', triton, re.MULTILINE)
