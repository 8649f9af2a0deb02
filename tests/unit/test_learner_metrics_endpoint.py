"""The learner's real /metrics endpoint (prometheus_client's HTTP server, no Triton) exports every
``fsrec_learner_*`` metric that docker/prometheus-rules.yml uses, so no alert watches a name that
does not exist (an alert on a missing series is silently never firing)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import yaml

from fsrec_serve.learner.metrics import LearnerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus-rules.yml"
LEARNER_NAME = re.compile(r"\bfsrec_learner_[a-z0-9_]+\b")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        return r.read().decode("utf-8")


def _series_names(text: str) -> set[str]:
    """Names of the samples in a Prometheus text exposition (what PromQL selects on)."""
    return {re.split(r"[{\s]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def _rule_names() -> dict[str, set[str]]:
    """{alert or record name: fsrec_learner_* names its expression uses}."""
    out = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = set(LEARNER_NAME.findall(str(rule["expr"])))
            if names:
                out[rule.get("alert") or rule["record"]] = names
    return out


def test_the_endpoint_exports_every_learner_metric_the_alerts_use():
    metrics = LearnerMetrics()
    port = metrics.serve(0)  # loopback, any free port (the default host)
    assert port > 0
    metrics.set_model("abc123")
    metrics.lag.set(42.0)
    text = _scrape(port)
    exported = _series_names(text)

    used = _rule_names()
    assert {"FsrecLearnerLagHigh", "FsrecLearnerRefineFailed"} <= set(used), used
    missing = {rule: sorted(n - exported) for rule, n in used.items() if n - exported}
    assert not missing, f"alerts use metrics the learner does not export: {missing}; exported: {sorted(exported)}"

    # the values the alerts compare are the live ones, and a failed re-fine-tune is a series (at 0)
    # before the first failure: increase() sees the first 0 -> 1 step
    assert re.search(r"^fsrec_learner_lag_seconds 42\.0$", text, re.MULTILINE), text
    assert re.search(r'^fsrec_learner_refines_total\{outcome="failed"\} 0\.0$', text, re.MULTILINE), text
    metrics.refines.labels("failed").inc()
    assert re.search(r'^fsrec_learner_refines_total\{outcome="failed"\} 1\.0$', _scrape(port), re.MULTILINE)
    assert 'fsrec_learner_model_info{fingerprint="abc123"} 1.0' in text


def test_every_documented_learner_metric_is_exported():
    """Every metric of fsrec_serve/learner/metrics.py (dashboards use them too), on the wire."""
    metrics = LearnerMetrics()
    exported = _series_names(_scrape(metrics.serve(0, "127.0.0.1")))
    for name in ("fsrec_learner_events_total", "fsrec_learner_lag_seconds", "fsrec_learner_pending_events",
                 "fsrec_learner_fit_seconds_bucket", "fsrec_learner_fit_seconds_count",
                 "fsrec_learner_users_refit_total", "fsrec_learner_refines_total",
                 "fsrec_learner_store_errors_total"):
        assert name in exported, (name, sorted(exported))


def test_the_host_is_configurable_for_containers():
    """A container binds 0.0.0.0 (fsrec learn --metrics-host): still served, on every address."""
    metrics = LearnerMetrics()
    port = metrics.serve(0, host="0.0.0.0")
    assert "fsrec_learner_lag_seconds" in _series_names(_scrape(port))
