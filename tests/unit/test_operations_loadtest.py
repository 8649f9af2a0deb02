"""The release gate of ``fsrec loadtest``: thresholds, stats parsing, hosts, traffic mix, and one
real (server-less) Locust run through the headless runner."""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from fsrec_serve.errors import ConfigError, LoadTestError
from fsrec_serve.operations.gate import (
    GateConfig,
    Thresholds,
    evaluate_gate,
    gate_config_from_dict,
    load_gate_config,
    parse_stats_csv,
    read_stats_csv,
)
from fsrec_serve.operations.loadtest import DEFAULT_GATE, LoadTestConfig, parse_run_time, run_loadtest
from fsrec_serve.operations.traffic import ALLOW_REMOTE_FLAG, load_histories, normalize_host, parse_k_mix, sample_k

ROOT = Path(__file__).resolve().parents[2]

# the header Locust 2.47 writes, and rows as it writes them (percentiles rounded)
HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
          "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
          "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")


def stats_text(rows: list[tuple]) -> str:
    """rows: (type, name, requests, failures, p50, p95, p99)."""
    lines = [HEADER]
    for typ, name, n, f, p50, p95, p99 in rows:
        lines.append(f"{typ},{name},{n},{f},{p50},{p50 * 1.1},{p50 * 0.5},{p99 * 1.5},10.0,{n / 10},{f / 10},"
                     f"{p50},{p50},{p50},{p50},{p95},{p95},{p99},{p99},{p99},{p99},{p99}")
    return "\n".join(lines) + "\n"


def rows_of(*rows):
    return parse_stats_csv(stats_text(list(rows)).splitlines())


GATE = gate_config_from_dict({"p95_ms": 100, "p99_ms": 200, "max_failure_ratio": 0.01, "min_requests": 50})


# -- parsing ------------------------------------------------------------------------------------
def test_parse_real_locust_stats_csv():
    text = textwrap.dedent("""\
        Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
        grpc,recommend k=10,1088,98,10.108983000009175,10.348343754595339,10.108983000009175,27.51421699997536,10.0,383.61700261085366,34.55373736752175,10,10,10,10,10,10,10,11,28,28,28
        ,Aggregated,1088,98,10.108983000009175,10.348343754595339,10.108983000009175,27.51421699997536,10.0,383.61700261085366,34.55373736752175,10,10,10,10,10,10,10,11,28,28,28
        """)
    rows = parse_stats_csv(text.splitlines())
    assert [r.name for r in rows] == ["recommend k=10", "Aggregated"]
    agg = rows[1]
    assert agg.type == "" and agg.requests == 1088 and agg.failures == 98
    assert agg.failure_ratio == pytest.approx(98 / 1088)
    assert agg.pct("95%") == 10 and agg.pct("99%") == 11 and agg.pct("99.9%") == 28
    assert agg.rps == pytest.approx(383.617, rel=1e-4)


def test_parse_rows_without_requests_and_bad_files(tmp_path):
    text = HEADER + "\n,Aggregated,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    (row,) = parse_stats_csv(text.splitlines())
    assert row.requests == 0 and row.pct("95%") is None and row.failure_ratio == 0.0
    with pytest.raises(LoadTestError, match="not a Locust stats CSV"):
        parse_stats_csv(["a,b,c", "1,2,3"])
    with pytest.raises(LoadTestError, match="no stats file"):
        read_stats_csv(tmp_path / "missing_stats.csv")


# -- the gate -----------------------------------------------------------------------------------
def test_gate_passes_within_thresholds_and_at_the_limit():
    rep = evaluate_gate(rows_of(("grpc", "recommend k=10", 500, 5, 20, 100, 200),
                                ("", "Aggregated", 500, 5, 20, 100, 200)), GATE)
    assert rep.passed, rep.summary()
    assert {c.metric for c in rep.checks} == {"requests", "failure_ratio", "p95_ms", "p99_ms"}
    assert "PASSED" in rep.summary()


@pytest.mark.parametrize("row, failing", [
    (("", "Aggregated", 500, 0, 20, 101, 150), {"p95_ms"}),
    (("", "Aggregated", 500, 0, 20, 90, 210), {"p99_ms"}),
    (("", "Aggregated", 500, 6, 20, 90, 150), {"failure_ratio"}),
    (("", "Aggregated", 49, 0, 20, 90, 150), {"requests"}),
    (("", "Aggregated", 500, 500, 20, 300, 900), {"failure_ratio", "p95_ms", "p99_ms"}),
])
def test_gate_fails_on_each_threshold(row, failing):
    rep = evaluate_gate(rows_of(row), GATE)
    assert not rep.passed
    assert {c.metric for c in rep.failures()} == failing
    assert "FAILED" in rep.summary() and "FAIL Aggregated" in rep.summary()


def test_gate_fails_without_data():
    # a run in which nothing was sent (server down before the first request) must not pass
    rep = evaluate_gate(rows_of(("", "Aggregated", 0, 0, 0, 0, 0)),
                        gate_config_from_dict({"p95_ms": 100, "max_failure_ratio": 0.5}))
    assert not rep.passed and {c.metric for c in rep.failures()} == {"p95_ms", "failure_ratio"}
    rep = evaluate_gate([], GATE)
    assert not rep.passed


def test_per_request_thresholds():
    cfg = gate_config_from_dict({"p99_ms": 1000, "requests": {"recommend k=50": {"p99_ms": 300},
                                                               "recommend k=99": {"p95_ms": 10}}})
    rows = rows_of(("grpc", "recommend k=10", 400, 0, 10, 50, 100), ("grpc", "recommend k=50", 40, 0, 30, 200, 400),
                   ("", "Aggregated", 440, 0, 12, 60, 300))
    rep = evaluate_gate(rows, cfg)
    bad = {(c.scope, c.metric) for c in rep.failures()}
    # k=50's own p99 is over its limit; k=99 was never requested (no data fails)
    assert bad == {("recommend k=50", "p99_ms"), ("recommend k=99", "p95_ms")}


# -- the gate file --------------------------------------------------------------------------------
def test_shipped_gate_file_loads():
    cfg = load_gate_config(DEFAULT_GATE)
    assert isinstance(cfg, GateConfig)
    assert cfg.aggregate.p95_ms and cfg.aggregate.p99_ms and cfg.aggregate.max_failure_ratio is not None
    assert cfg.aggregate.p95_ms <= cfg.aggregate.p99_ms
    assert cfg.load.users >= 1 and parse_run_time(cfg.load.run_time) > 0
    parse_k_mix(cfg.load.k_mix)


@pytest.mark.parametrize("d, match", [
    ({"p95": 100}, "unknown threshold"),
    ({"p95_ms": -1}, "p95_ms must be a number >= 0"),
    ({"p99_ms": "fast"}, "p99_ms must be a number"),
    ({"max_failure_ratio": 5}, r"ratio in \[0, 1\]"),
    ({"min_requests": 1}, "sets no threshold"),
    ({"p95_ms": 1, "min_requests": 2.5}, "min_requests must be an integer"),
    ({"p95_ms": 1, "requests": {"x": {"p50_ms": 3}}}, r"requests\['x'\]: unknown threshold"),
    ({"p95_ms": 1, "load": {"threads": 3}}, "'load' accepts only"),
    ({"p95_ms": 1, "load": {"k_mix": "ten"}}, "k mix entry"),
])
def test_bad_gate_configs_are_refused_with_the_reason(d, match):
    with pytest.raises(ConfigError, match=match):
        gate_config_from_dict(d)


def test_gate_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_gate_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("p95_ms: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_gate_config(bad)


# -- hosts, traffic -------------------------------------------------------------------------------
@pytest.mark.parametrize("host, protocol, want", [
    ("127.0.0.1:8001", "grpc", "127.0.0.1:8001"),
    ("localhost", "grpc", "localhost:8001"),
    ("http://127.0.0.1:8000", "http", "127.0.0.1:8000"),
    ("http://LOCALHOST:9000/", "http", "localhost:9000"),
    ("grpc://127.0.0.1:18001", "grpc", "127.0.0.1:18001"),
])
def test_local_hosts_are_accepted(host, protocol, want):
    assert normalize_host(host, protocol) == want


@pytest.mark.parametrize("host", ["10.0.0.5:8001", "example.com:8001", "0.0.0.0:8001", "127.0.0.2:8001",
                                  "http://192.168.1.10:8000", "https://127.0.0.1:8000", "", "127.0.0.1:8001/x"])
def test_other_hosts_are_refused(host):
    with pytest.raises(ConfigError):
        normalize_host(host, "grpc")


@pytest.mark.parametrize("host, want", [
    ("staging.example:8001", "staging.example:8001"),
    ("10.0.0.5", "10.0.0.5:8001"),
    ("127.0.0.2:18001", "127.0.0.2:18001"),
    ("grpc://[::1]:9001", "[::1]:9001"),
])
def test_other_hosts_need_the_opt_in_flag(host, want):
    with pytest.raises(ConfigError, match=ALLOW_REMOTE_FLAG):
        normalize_host(host, "grpc")
    assert normalize_host(host, "grpc", allow_remote=True) == want


@pytest.mark.parametrize("host", ["", "127.0.0.1:8001/x", "https://staging.example:8001", "staging.example:99999"])
def test_the_opt_in_does_not_accept_malformed_hosts(host):
    with pytest.raises(ConfigError):
        normalize_host(host, "grpc", allow_remote=True)


def test_runner_refuses_remote_host_before_starting_anything(tmp_path):
    with pytest.raises(ConfigError, match=f"only 127.0.0.1 and localhost.*{ALLOW_REMOTE_FLAG}"):
        run_loadtest(LoadTestConfig(host="203.0.113.7:8001", report_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_cli_refuses_remote_host_naming_the_flag(tmp_path, capsys):
    from fsrec_serve.cli import main

    rc = main(["loadtest", "--host", "127.0.0.2:8001", "--report-dir", str(tmp_path / "r")])
    assert rc == 2 and ALLOW_REMOTE_FLAG in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_k_mix_parsing_and_sampling():
    assert parse_k_mix("10") == [(10, 1.0)]
    mix = parse_k_mix("20:1, 10:3")
    assert mix == [(10, 0.75), (20, 0.25)]
    rng = random.Random(0)
    counts = Counter(sample_k(mix, rng) for _ in range(20000))
    assert set(counts) == {10, 20}
    assert counts[10] / 20000 == pytest.approx(0.75, abs=0.015)
    for bad in ("", "0:1", "10:-1", "10:0", "k:1", "10;20"):
        with pytest.raises(ConfigError):
            parse_k_mix(bad)


def test_run_time_parsing():
    assert parse_run_time("10s") == 10 and parse_run_time("2m") == 120
    assert parse_run_time("1h2m3s") == 3723 and parse_run_time("7") == 7
    with pytest.raises(ConfigError):
        parse_run_time("soon")


def test_histories_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_histories(tmp_path / "h.json")
    (tmp_path / "h.json").write_text(json.dumps({"histories": [[], []]}))
    with pytest.raises(ConfigError, match="no non-empty history"):
        load_histories(tmp_path / "h.json")


# -- one real Locust run through the runner (no server: the users time a local stand-in) ----------
SYNTHETIC_LOCUSTFILE = '''
import json, random, time
from locust import User, constant, events, task
from fsrec_serve.operations.traffic import add_locust_arguments, install_final_stats_writer, load_histories, parse_k_mix, sample_k

SENT = {"n": 0, "failed": 0}

@events.init_command_line_parser.add_listener
def _args(parser):
    add_locust_arguments(parser)

@events.init.add_listener
def _init(environment, **kw):
    install_final_stats_writer(environment)
    o = environment.parsed_options
    environment.fsrec = (load_histories(o.histories), parse_k_mix(o.k_mix))

@events.quit.add_listener
def _quit(exit_code, **kw):
    with open(OUT, "w") as f:
        json.dump(SENT, f)

class GrpcRecommenderUser(User):
    wait_time = constant(0.002)

    @task
    def recommend(self):
        hist, mix = self.environment.fsrec
        k = sample_k(mix, random)
        t0 = time.perf_counter()
        time.sleep(0.001 * len(random.choice(hist)))   # "work" grows with the history
        fail = random.random() < 0.2
        SENT["n"] += 1
        SENT["failed"] += fail
        self.environment.events.request.fire(
            request_type="grpc", name=f"recommend k={k}", response_time=(time.perf_counter() - t0) * 1000,
            response_length=k, exception=RuntimeError("synthetic") if fail else None, context={})
'''


def test_runner_writes_reports_and_gate_fails_with_exit_1(tmp_path):
    from fsrec_serve.commands import loadtest as cmd

    sent = tmp_path / "sent.json"
    lf = tmp_path / "locustfile.py"
    lf.write_text(SYNTHETIC_LOCUSTFILE.replace("OUT", repr(str(sent))))
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps({"histories": [["1", "2"], ["3", "4", "5", "6"]]}))
    gate = tmp_path / "gate.yaml"
    gate.write_text("p95_ms: 1000\np99_ms: 1000\nmax_failure_ratio: 0.05\nmin_requests: 20\n")
    report = tmp_path / "reports"

    parser = argparse.ArgumentParser()
    cmd.add_parsers(parser.add_subparsers())
    args = parser.parse_args([
        "loadtest", "--host", "127.0.0.1:1", "--users", "4", "--spawn-rate", "4", "--run-time", "3s",
        "--k-mix", "10:0.5,20:0.5", "--gate", str(gate), "--report-dir", str(report),
        "--histories", str(hist), "--locustfile", str(lf), "--item-map", str(hist),
    ])
    rc = args.func(args)
    assert rc == 1  # 20 % failures > 5 %: the gate fails the release

    stats, html = report / "locust_stats.csv", report / "locust_report.html"
    assert stats.exists() and html.exists() and html.stat().st_size > 10_000
    assert (report / "locust_failures.csv").exists()
    verdict = json.loads((report / "gate.json").read_text())
    assert verdict["gate"]["passed"] is False
    assert [c["metric"] for c in verdict["gate"]["checks"] if not c["passed"]] == ["failure_ratio"]

    rows = read_stats_csv(stats)
    agg = next(r for r in rows if r.name == "Aggregated")
    sent_counts = json.loads(sent.read_text())
    # the CSV holds the FINAL statistics: every request the users sent, not a 1-second-old snapshot
    assert agg.requests == sent_counts["n"] and agg.failures == sent_counts["failed"]
    assert agg.requests >= 50
    assert {r.name for r in rows} == {"recommend k=10", "recommend k=20", "Aggregated"}
    assert 1.0 <= agg.pct("50%") <= 50  # the users slept 2-4 ms per request
    # the same statistics under a lenient gate pass
    lenient = GateConfig(aggregate=Thresholds(p95_ms=1000, p99_ms=1000, max_failure_ratio=0.5, min_requests=20))
    assert evaluate_gate(rows, lenient).passed
