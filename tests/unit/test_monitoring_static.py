"""Static checks of the monitoring files (no Prometheus, Grafana or cluster runs here): promtool
checks the Prometheus config and rules and runs the alerts' unit tests (each alert fires and stays
silent as its test says; a weakened rule fails them); every alert carries a `for:`, a severity and
a runbook description; the Grafana provisioning that compose mounts exists and agrees with the
dashboard; the dashboard's and the adapter's queries parse; the Prometheus Operator monitors, the
prometheus-adapter rule and the HPA agree with the Services, pods and ports they point at.

tests/e2e/test_monitoring_e2e.py checks the metric names against real /metrics endpoints.
promtool comes from Debian's prometheus package (scripts/setup.sh installs it); on CI (env CI) a
missing promtool fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_queries import (
    ADAPTER,
    DASHBOARDS,
    PROMETHEUS_SERIES,
    RULES,
    adapter_expr,
    adapter_rules,
    all_queries,
    dashboard_panels,
    metric_names,
    recorded_names,
    selectors,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
TESTS = DOCKER / "prometheus-rules.test.yml"
SEVERITIES = {"page", "ticket"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing on CI: scripts/setup.sh installs it (apt-get install prometheus)")
    pytest.skip("promtool is not installed (apt-get install prometheus)")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _alerts() -> list[dict]:
    return [r for g in _docs(RULES)[0]["groups"] for r in g["rules"] if "alert" in r]


# -- Prometheus rules -------------------------------------------------------------------------------
def test_promtool_checks_config_and_rules():
    promtool = _promtool()
    r = _run([promtool, "check", "config", str(DOCKER / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    n_rules = sum(len(g["rules"]) for g in _docs(RULES)[0]["groups"])
    r = _run([promtool, "check", "rules", str(RULES)])
    assert r.returncode == 0 and f"{n_rules} rules found" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_duration_a_severity_and_a_runbook():
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= {
        "FsrecLatencyP99High", "FsrecLatencyP95High", "FsrecRequestFailures", "FsrecQueueTimeHigh", "FsrecTritonDown",
        "FsrecServingDown", "FsrecModelNotLoaded", "FsrecLearnerLagHigh", "FsrecLearnerRefineFailed",
        "FsrecLearnerDown", "FsrecLearnerStoreErrors"}
    for a in alerts:
        assert re.fullmatch(r"\d+[smh]", str(a.get("for", ""))), f"{a['alert']}: no for: duration"
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        ann = a["annotations"]
        assert ann["summary"].strip() and len(ann["description"].split()) >= 12, a["alert"]
    pages = {a["alert"] for a in alerts if a["labels"]["severity"] == "page"}
    assert {"FsrecLatencyP99High", "FsrecRequestFailures", "FsrecServingDown", "FsrecLearnerLagHigh"} <= pages


def test_promtool_unit_tests_cover_every_alert_firing_and_silent():
    promtool = _promtool()
    (t,) = _docs(TESTS)
    assert t["rule_files"] == [RULES.name]
    cases = [c for group in t["tests"] for c in group["alert_rule_test"]]
    for name in {a["alert"] for a in _alerts()}:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no test where it stays silent"
    r = _run([promtool, "test", "rules", str(TESTS)])
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


# each alert weakened or widened in one way its unit tests must notice
MUTATIONS = {
    "FsrecLatencyP99High": (("\n          and on (instance, model, version) rate(nv_inference_request_summary_us_count"
                             '{model="fsrec"}[5m]) >= 1\n        for: 5m'), "\n        for: 5m"),
    "FsrecLatencyP95High": ("/ 1000 > 50", "/ 1000 > 30"),
    "FsrecRequestFailures": ("> 0.01 * sum", "> 0.1 * sum"),
    "FsrecQueueTimeHigh": ("> 20000", "> 40000"),
    "FsrecTritonDown": ('up{job="fsrec-triton"} == 0', 'up{job="fsrec-triton"} < 1 or up{job="fsrec-triton"} == 1'),
    "FsrecServingDown": ('absent(up{job="fsrec-triton"} == 1)', 'absent(up{job="fsrec-triton"})'),
    "FsrecModelNotLoaded": (' unless on (instance) nv_inference_request_success{model="fsrec"}', ""),
    "FsrecLearnerLagHigh": ("fsrec_learner_lag_seconds > 30", "fsrec_learner_lag_seconds > 300"),
    "FsrecLearnerRefineFailed": ('{outcome="failed"}', '{outcome=~"failed|refused"}'),
    "FsrecLearnerDown": ('up{job="fsrec-learner"} == 0', "up == 0"),
    "FsrecLearnerStoreErrors": ("[5m]) > 0\n", "[5m]) >= 0\n"),
}


@pytest.mark.parametrize("alert", sorted(MUTATIONS))
def test_a_changed_rule_fails_its_unit_tests(alert, tmp_path):
    promtool = _promtool()
    old, new = MUTATIONS[alert]
    rules = RULES.read_text()
    assert rules.count(old) == 1, (alert, old)
    (tmp_path / RULES.name).write_text(rules.replace(old, new))
    (tmp_path / TESTS.name).write_text(TESTS.read_text())
    assert _run([promtool, "check", "rules", str(tmp_path / RULES.name)]).returncode == 0  # still valid PromQL
    r = _run([promtool, "test", "rules", str(tmp_path / TESTS.name)])
    assert r.returncode != 0 and f"alertname: {alert}," in r.stdout + r.stderr, r.stdout + r.stderr


def test_every_query_parses_and_recorded_names_are_defined():
    """Rules, dashboard panels and adapter rules: valid PromQL; a fsrec:* name is a recording rule."""
    queries = all_queries()
    sources = {q.source.split(":")[0] for q in queries}
    assert sources == {RULES.name, "fsrec.json", ADAPTER.name}, sources
    recorded = recorded_names()
    for q in queries:
        names = metric_names(q.expr)  # raises on a syntax error
        assert names, q
        undefined = {n for n in names if ":" in n} - recorded
        assert not undefined, f"{q.source}: recording rules that do not exist: {undefined}"


def test_metric_name_parser_finds_selectors_and_nothing_else():
    expr = ('sum by (model, le) (rate(a_total{model="fsrec", le!="x"}[5m])) / on (instance) group_left '
            'clamp_min(b, 1e-9) unless absent({__name__="c"}) or max_over_time(d_bucket[5m:1m]) > bool 2')
    assert metric_names(expr) == {"a_total", "b", "c", "d_bucket"}
    (sel,) = selectors('x{model="fsrec", quantile=~"0.5|0.99", reason!="OTHER", job!~".*learner"}')
    assert sel.matches({"model": "fsrec", "quantile": "0.99", "reason": "BACKEND", "job": "fsrec-triton"})
    assert not sel.matches({"model": "fsrec", "quantile": "0.995"})  # regexes are anchored
    assert not sel.matches({"model": "fsrec", "quantile": "0.5", "reason": "OTHER"})
    assert not sel.matches({"model": "fsrec", "quantile": "0.5", "job": "fsrec-learner"})
    assert not sel.matches({"model": "other", "quantile": "0.5"})
    with pytest.raises(ValueError):
        metric_names('{__name__=~"nv_.*"}')  # a regex name: not checkable


def test_learner_names_in_every_query_are_the_learners_own():
    """fsrec_learner_* names used anywhere are samples of the learner's real registry."""
    from fsrec_serve.learner.metrics import LearnerMetrics

    metrics = LearnerMetrics()
    metrics.set_model("0123456789abcdef")  # as every Learner does when it starts
    samples = {s.name for m in metrics.registry.collect() for s in m.samples}
    used = {n for q in all_queries() for n in metric_names(q.expr) if n.startswith("fsrec_learner_")}
    assert used and used <= samples, used - samples
    others = {n for q in all_queries() for n in metric_names(q.expr)} - used - recorded_names() - PROMETHEUS_SERIES
    assert all(n.startswith("nv_") for n in others), others  # Triton's: checked live by the e2e test


# -- Grafana ----------------------------------------------------------------------------------------
def _grafana_files() -> tuple[dict, dict[str, Path]]:
    (c,) = _docs(DOCKER / "compose.yaml")
    g = c["services"]["grafana"]
    mounts = {}
    for m in g["volumes"]:
        src, dst, *_ = m.split(":")
        if src.startswith("."):
            mounts[dst] = (DOCKER / src).resolve()
    return g, mounts


def test_compose_provisions_grafana_with_files_that_exist():
    from fsrec_serve import contract  # noqa: F401 - the package imports (compose builds from it)

    (c,) = _docs(DOCKER / "compose.yaml")
    g, mounts = _grafana_files()
    assert g["profiles"] == ["monitoring"] and "prometheus" in g["depends_on"]
    assert not g["image"].endswith(":latest") and re.search(r":\d+\.\d+\.\d+$", g["image"])
    assert g["ports"] == ["127.0.0.1:3000:3000"]  # loopback only, as every other service
    secret = g["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert secret == f"/run/secrets/{g['secrets'][0]}" and g["secrets"][0] in c["secrets"]
    prov = mounts["/etc/grafana/provisioning"]
    (ds_file,) = sorted((prov / "datasources").glob("*.yml"))
    (prov_file,) = sorted((prov / "dashboards").glob("*.yml"))
    (ds,) = _docs(ds_file)[0]["datasources"]
    prom = c["services"]["prometheus"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in prom["ports"] and g["profiles"] == prom["profiles"]
    (provider,) = _docs(prov_file)[0]["providers"]
    assert provider["type"] == "file"
    dash_dir = mounts[provider["options"]["path"]]  # the provider reads the folder compose mounts there
    assert dash_dir == DASHBOARDS.resolve() and sorted(p.name for p in dash_dir.glob("*.json")) == ["fsrec.json"]
    for panel in dashboard_panels(DASHBOARDS / "fsrec.json"):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
            assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"]), panel["title"]


def test_dashboard_layout_and_panels():
    path = DASHBOARDS / "fsrec.json"
    d = json.loads(path.read_text())
    assert d["uid"] and d["schemaVersion"] >= 36 and d["title"]
    panels = dashboard_panels(path)
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:  # inside the 24-column grid, no two panels on the same cell
        gp = p["gridPos"]
        assert gp["x"] >= 0 and gp["w"] >= 1 and gp["x"] + gp["w"] <= 24, p["title"]
        mine = {(gp["x"] + i, gp["y"] + j) for i in range(gp["w"]) for j in range(gp["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert p["description"] and refs and len(set(refs)) == len(refs), p["title"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for what in ("requests / s", "p50 / p95 / p99", "queue time", "errors", "batch size", "version", "lag",
                 "fits", "re-fine-tune"):
        assert what in titles, what
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for name in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us", "nv_inference_request_failure",
                 "fsrec:batch_size:avg1m", "fsrec_learner_lag_seconds", "fsrec_learner_refines_total"):
        assert name in exprs, name


# -- Kubernetes: monitors, prometheus-adapter, HPA ---------------------------------------------------
def _by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in _docs(path)}


def test_monitors_scrape_the_triton_service_and_the_learner_pods_under_the_rules_job_names():
    from fsrec_serve import contract
    from fsrec_serve.commands.learn import DEFAULT_LEARNER_METRICS_PORT

    mon = _by_kind(K8S / "monitoring" / "monitors.yaml")
    sm, pm = mon["ServiceMonitor"], mon["PodMonitor"]
    assert sm["apiVersion"] == pm["apiVersion"] == "monitoring.coreos.com/v1"
    rules = RULES.read_text()
    jobs = {j["job_name"] for j in _docs(DOCKER / "prometheus.yml")[0]["scrape_configs"]}

    services = [s for s in _docs(K8S / "service.yaml") if sm["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    scraped = [s for s in services for p in s["spec"]["ports"] if p["name"] == sm["spec"]["endpoints"][0]["port"]]
    assert len(scraped) == 1, "exactly one Service (not the headless one) exposes the metrics port"
    (port,) = [p for p in scraped[0]["spec"]["ports"] if p["name"] == "metrics"]
    assert port["port"] == contract.DEFAULT_METRICS_PORT
    job = scraped[0]["metadata"]["labels"][sm["spec"]["jobLabel"]]
    assert job == "fsrec-triton" and job in jobs and f'job="{job}"' in rules
    ep = sm["spec"]["endpoints"][0]
    assert ep["path"] == "/metrics" and int(ep["scrapeTimeout"][:-1]) < int(ep["interval"][:-1])

    (dep,) = _docs(K8S / "deployment.yaml")
    learner = next(d for d in _docs(K8S / "learner.yaml") if d["kind"] == "Deployment")
    assert not pm["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    pod = learner["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (ctr,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    pep = pm["spec"]["podMetricsEndpoints"][0]
    assert ports[pep["port"]] == DEFAULT_LEARNER_METRICS_PORT and pep["path"] == "/metrics"
    job = pod["metadata"]["labels"][pm["spec"]["jobLabel"]]
    assert job == "fsrec-learner" and job in jobs and f'job="{job}"' in rules


def test_hpa_scales_on_the_adapters_queue_time_metric_and_cpu():
    (hpa,) = _docs(K8S / "hpa.yaml")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Pods", "Resource"} and metrics["Resource"]["resource"]["name"] == "cpu"
    pods = metrics["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue"
    target_us = float(pods["target"]["averageValue"])
    queue_alert = next(a for a in _alerts() if a["alert"] == "FsrecQueueTimeHigh")
    alert_us = float(re.search(r">\s*(\d+)", queue_alert["expr"]).group(1))
    assert 0 < target_us < alert_us, "scale out well before the queue-time alert fires"

    (cm,) = _docs(ADAPTER)
    assert cm["kind"] == "ConfigMap"
    (rule,) = adapter_rules()
    assert rule["name"]["as"] == pods["metric"]["name"]
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert metric_names(rule["seriesQuery"]) == {"nv_inference_queue_duration_us"}
    expr = adapter_expr(rule)  # the query the adapter sends, with its template fields filled in
    assert metric_names(expr) == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    assert "sum by (pod)" in expr and expr.count('model="fsrec"') == 2
    recorded = next(r for g in _docs(RULES)[0]["groups"] for r in g["rules"]
                    if r.get("record") == "fsrec:queue_us_per_request:avg1m")
    assert metric_names(recorded["expr"]) == metric_names(expr)  # the alert and the autoscaler: one signal
