"""A short, bounded Locust run against the session's real tritonserver (tests/e2e/conftest.py),
through the release-gate runner: requests succeed, reports are written, the gate judges them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fsrec_serve.errors import ConfigError
from fsrec_serve.operations.gate import GateConfig, Thresholds, evaluate_gate
from fsrec_serve.operations.loadtest import LoadTestConfig, run_loadtest
from fsrec_serve.operations.traffic import ALLOW_REMOTE_FLAG, load_histories


@pytest.fixture(scope="module")
def gate_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "gate.yaml"
    # generous latency limits: CI machines are slow and shared; failures must be zero
    path.write_text("p95_ms: 5000\np99_ms: 10000\nmax_failure_ratio: 0.0\nmin_requests: 10\n")
    return path


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_short_locust_run_against_triton(protocol, triton_server, fsrec_repository, e2e_limits, gate_file,
                                         tmp_path):
    data_dir = os.environ.get("FSREC_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
    host = triton_server.url_grpc if protocol == "grpc" else triton_server.url_http
    report = tmp_path / f"report-{protocol}"
    res = run_loadtest(LoadTestConfig(
        host=host, protocol=protocol, gate=gate_file, report_dir=report, users=4, spawn_rate=4,
        run_time="3s", k_mix=f"5:0.5,{e2e_limits.max_top_k}:0.5", repository=fsrec_repository,
        data_dir=Path(data_dir), timeout_s=90,
    ))

    # the reports Locust writes, plus the gate's verdict
    assert res.stats_csv.exists() and res.html.exists() and res.html.stat().st_size > 10_000
    assert (report / "locust_failures.csv").exists() and (report / "gate.json").exists()
    assert "<html" in res.html.read_text()[:2000].lower()

    # traffic: real held-out users of ML-100K, as raw ids (written by the runner)
    hist = load_histories(report / "histories.json")
    assert len(hist) > 50 and len({len(h) for h in hist}) > 10  # a real length distribution

    agg = res.aggregated()
    assert agg is not None and agg.requests >= 10, (report / "locust.log").read_text()[-3000:]
    assert agg.failures == 0, (report / "locust_failures.csv").read_text()
    names = {r.name for r in res.rows} - {"Aggregated"}
    assert names <= {"recommend k=5", f"recommend k={e2e_limits.max_top_k}"} and names
    assert all(r.type == protocol for r in res.rows if r.name != "Aggregated")
    assert agg.pct("50%") is not None and agg.pct("50%") > 0
    assert res.passed and res.returncode == 0
    verdict = json.loads((report / "gate.json").read_text())
    assert verdict["gate"]["passed"] is True and verdict["host"].startswith("127.0.0.1:")

    # the same run under an impossible latency limit fails the release
    strict = GateConfig(aggregate=Thresholds(p95_ms=0.0001, max_failure_ratio=0.0))
    rep = evaluate_gate(res.rows, strict)
    assert not rep.passed and [c.metric for c in rep.failures()] == ["p95_ms"]


def test_load_test_of_another_host_needs_the_opt_in_and_names_the_host(server_factory, repository_copy,
                                                                       e2e_limits, gate_file, tmp_path):
    """127.0.0.2 stands in for a staging host (it is still this machine's loopback)."""
    repo = repository_copy("remote")
    server = server_factory(repo, host="127.0.0.2", metrics_port=-1)
    host = f"127.0.0.2:{server.ports.grpc}"
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps({"histories": [["1", "2", "3"], ["50", "7"]]}))
    cfg = dict(host=host, protocol="grpc", gate=gate_file, users=2, spawn_rate=2, run_time="5s", k_mix="5",
               repository=repo, histories=hist, timeout_s=90)
    with pytest.raises(ConfigError, match=ALLOW_REMOTE_FLAG):
        run_loadtest(LoadTestConfig(report_dir=tmp_path / "refused", **cfg))
    assert not (tmp_path / "refused").exists()

    report = tmp_path / "report"
    res = run_loadtest(LoadTestConfig(report_dir=report, allow_remote=True, **cfg))
    agg = res.aggregated()
    assert res.host == host and agg is not None and agg.requests >= 1 and agg.failures == 0, \
        (report / "locust.log").read_text()[-3000:]
    assert json.loads((report / "gate.json").read_text())["host"] == host
