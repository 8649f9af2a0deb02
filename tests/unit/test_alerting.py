"""Paging: docker/alertmanager.yml with the real Alertmanager tools, no mocks.

amtool checks the config and resolves the route of every alert of docker/prometheus-rules.yml
(read from the file): its severity label reaches that severity's receiver. The inhibition rules
name alerts that exist and compare labels those alerts really carry (the exp_labels of the promtool
unit tests, which promtool checks label for label). compose's alertmanager service mounts files
that exist, Prometheus sends its alerts to that service's name and port, and the Prometheus
Operator AlertmanagerConfig is the same tree. End to end: a real alertmanager, started through the
compose entrypoint (the webhook URLs read from files, as from the compose secrets), routes a posted
severity=page alert to the on-call webhook (a local HTTP server) within seconds, a ticket to the
ticket webhook, and mutes what an inhibition says.

amtool and alertmanager come from Debian's prometheus-alertmanager package (scripts/setup.sh
installs it); on CI (env CI) a missing tool fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CONFIG = DOCKER / "alertmanager.yml"
ENTRYPOINT = DOCKER / "alertmanager-entrypoint.sh"
RULES = DOCKER / "prometheus-rules.yml"
RULE_TESTS = DOCKER / "prometheus-rules.test.yml"
AM_CRD = DOCKER / "k8s" / "monitoring" / "alertmanager-config.yaml"
AM_SECRET = DOCKER / "k8s" / "examples" / "alertmanager-webhooks-secret.yaml"
PLACEHOLDERS = {"page": "http://fsrec-page-webhook.invalid/", "ticket": "http://fsrec-ticket-webhook.invalid/"}
MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')
NAMES = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\|[A-Za-z][A-Za-z0-9_]*)*")  # an alternation of exact names


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing on CI: scripts/setup.sh installs it (apt-get install prometheus-alertmanager)")
    pytest.skip(f"{name} is not installed (apt-get install prometheus-alertmanager)")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _config() -> dict:
    (c,) = _docs(CONFIG)
    return c


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in _docs(RULES)[0]["groups"] for r in g["rules"] if "alert" in r}


def _fired_labels() -> dict[str, list[dict]]:
    """alertname -> the label sets promtool's unit tests expect it to fire with (alertname included)."""
    (t,) = _docs(RULE_TESTS)
    out: dict[str, list[dict]] = {}
    for group in t["tests"]:
        for case in group["alert_rule_test"]:
            for exp in case.get("exp_alerts") or []:
                out.setdefault(case["alertname"], []).append({**exp["exp_labels"], "alertname": case["alertname"]})
    return out


def _matcher(text: str) -> tuple[str, str, str]:
    m = MATCHER.match(text)
    assert m, f"not a name<op>\"value\" matcher: {text!r}"
    return m.group(1), m.group(2), m.group(3)


def _severity_receivers() -> dict[str, str]:
    """severity -> receiver, from the route tree's children (each matches one severity)."""
    out = {}
    for route in _config()["route"]["routes"]:
        (m,) = route["matchers"]
        name, op, value = _matcher(m)
        assert (name, op) == ("severity", "=") and not route.get("continue", False), route
        out[value] = route["receiver"]
    return out


def _secs(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def _routes_test(amtool: str, labels: dict[str, str], config: Path = CONFIG) -> list[str]:
    r = _run([amtool, "config", "routes", "test", f"--config.file={config}",
              *(f"{k}={v}" for k, v in sorted(labels.items()))])
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


# -- the config, its routes and inhibitions ---------------------------------------------------------
def test_amtool_checks_the_config_and_refuses_a_broken_one(tmp_path):
    amtool = _tool("amtool")
    r = _run([amtool, "check-config", str(CONFIG)])
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    c = _config()
    assert f"{len(c['inhibit_rules'])} inhibit rules" in r.stdout and f"{len(c['receivers'])} receivers" in r.stdout
    bad = tmp_path / "alertmanager.yml"
    bad.write_text(CONFIG.read_text().replace("receiver: fsrec-page", "receiver: fsrec-pager"))
    r = _run([amtool, "check-config", str(bad)])
    assert r.returncode != 0 and "fsrec-pager" in r.stdout + r.stderr, r.stdout + r.stderr  # undefined receiver
    bad.write_text(CONFIG.read_text().replace("      - url: ", "      - url_file: ", 1))
    assert _run([amtool, "check-config", str(bad)]).returncode != 0  # 0.25 has no url_file: not used here


def test_page_and_ticket_route_to_their_receivers():
    amtool = _tool("amtool")
    assert _routes_test(amtool, {"severity": "page", "alertname": "FsrecLatencyP99High"}) == ["fsrec-page"]
    assert _routes_test(amtool, {"severity": "ticket", "alertname": "FsrecLatencyP95High"}) == ["fsrec-ticket"]
    assert _routes_test(amtool, {"alertname": "SomethingElse"}) == ["fsrec-ticket"]  # no severity: not dropped
    r = _run([amtool, "config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=fsrec-ticket",
              "severity=page", "alertname=FsrecLatencyP99High"])
    assert r.returncode != 0  # a page never lands in the ticket queue
    c = _config()
    assert _severity_receivers() == {"page": "fsrec-page", "ticket": "fsrec-ticket"}
    page, ticket = (next(r for r in c["route"]["routes"] if r["receiver"] == n) for n in ("fsrec-page", "fsrec-ticket"))
    assert _secs(page["group_wait"]) <= 30 and _secs(page["repeat_interval"]) <= 4 * 3600  # pages are prompt
    for key in ("group_wait", "group_interval", "repeat_interval"):
        assert _secs(ticket[key]) > _secs(page[key]), key  # tickets are batched longer


def test_every_alert_of_the_rules_routes_to_its_severitys_receiver():
    """Each alert, with the labels it fires with (promtool's exp_labels), reaches exactly the receiver
    of its severity: a new severity or a misspelt one fails here."""
    amtool = _tool("amtool")
    alerts, fired, receivers = _alerts(), _fired_labels(), _severity_receivers()
    assert len(alerts) >= 11
    assert {a["labels"]["severity"] for a in alerts.values()} == set(receivers), "a severity without a route"
    for name, rule in alerts.items():
        expected = receivers[rule["labels"]["severity"]]
        for labels in [{"alertname": name, **rule["labels"]}, *fired[name]]:
            assert _routes_test(amtool, labels) == [expected], (name, labels)


def test_inhibitions_name_real_alerts_and_compare_labels_they_carry():
    alerts, fired = _alerts(), _fired_labels()
    rules = _config()["inhibit_rules"]
    assert rules

    def names(matchers: list[str]) -> set[str]:
        (m,) = matchers  # one alertname matcher: the alerts it selects are known exactly
        name, op, value = _matcher(m)
        assert name == "alertname" and op in ("=", "=~") and NAMES.fullmatch(value), m
        found = set(value.split("|"))
        assert found <= set(alerts), f"{m}: no such alert in {RULES.name}: {found - set(alerts)}"
        return found

    covered = set()
    for rule in rules:
        assert not {"source_match", "target_match", "source_match_re", "target_match_re"} & set(rule)  # deprecated
        sources, targets = names(rule["source_matchers"]), names(rule["target_matchers"])
        assert not sources & targets, rule
        for s in sources:
            for t in targets:
                sev = alerts[s]["labels"]["severity"], alerts[t]["labels"]["severity"]
                assert sev != ("ticket", "page"), f"{s} (a ticket) would mute {t} (a page)"
        for label in rule.get("equal", []):  # a label one side lacks would never be equal: a dead rule
            for a in sources | targets:
                assert fired[a] and all(label in ls for ls in fired[a]), f"{a} fires without label {label!r}"
        covered |= sources
    assert {"FsrecServingDown", "FsrecTritonDown"} <= covered


def test_receivers_are_webhooks_with_placeholder_urls_only():
    """No real URL is committed: each receiver's URL is its .invalid placeholder that the entrypoint
    replaces, and every route's receiver exists."""
    c = _config()
    receivers = {r["name"]: r for r in c["receivers"]}
    routed = {c["route"]["receiver"], *(r["receiver"] for r in c["route"]["routes"])}
    assert routed == set(receivers)
    for severity, name in _severity_receivers().items():
        (hook,) = receivers[name]["webhook_configs"]
        assert hook["url"] == PLACEHOLDERS[severity] and hook["send_resolved"] is True
        assert set(receivers[name]) == {"name", "webhook_configs"}
    assert re.findall(r'url: "([^"]+)"', CONFIG.read_text()) == list(PLACEHOLDERS.values())
    script = ENTRYPOINT.read_text()
    assert all(f'="{p}"' in script for p in PLACEHOLDERS.values())


# -- compose, prometheus.yml, Kubernetes ------------------------------------------------------------
def _compose() -> dict:
    (c,) = _docs(DOCKER / "compose.yaml")
    return c


def _flag(cmd: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in cmd if a.startswith(f"{name}=")]
    return value


def test_compose_alertmanager_mounts_files_that_exist_and_reads_the_url_secrets():
    c = _compose()
    s = c["services"]
    am, prom = s["alertmanager"], s["prometheus"]
    assert am["profiles"] == prom["profiles"] == s["grafana"]["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", am["image"]), am["image"]
    mounts = {}
    for m in am["volumes"]:
        src, dst, *mode = m.split(":")
        if src.startswith("."):
            assert (DOCKER / src).is_file() and mode == ["ro"], m  # config files: present, read-only
            mounts[dst] = (DOCKER / src).resolve()
        else:
            assert src in c["volumes"] and dst == _flag(am["command"], "--storage.path"), m
    assert am["entrypoint"][0] == "/bin/sh" and mounts[am["entrypoint"][1]] == ENTRYPOINT.resolve()
    env = am["environment"]
    assert mounts[env["AM_CONFIG"]] == CONFIG.resolve()
    assert Path(env["AM_RENDERED_CONFIG"]).parent.as_posix() in am["tmpfs"]  # the URLs stay in memory
    for key, secret in (("AM_PAGE_URL_FILE", "alertmanager_page_url"),
                        ("AM_TICKET_URL_FILE", "alertmanager_ticket_url")):
        assert env[key] == f"/run/secrets/{secret}" and secret in am["secrets"]
        src = DOCKER / c["secrets"][secret]["file"]
        assert src.parent == DOCKER / "secrets" and secret in (src.parent / ".gitignore").read_text()
    assert (DOCKER / "secrets" / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]
    port = _flag(am["command"], "--web.listen-address").rsplit(":", 1)[1]
    assert am["ports"] == [f"127.0.0.1:{port}:{port}"]  # loopback only, as every other service
    assert _flag(am["command"], "--cluster.listen-address") == ""  # one instance: no gossip listener
    assert "alertmanager" in prom["depends_on"]


def test_prometheus_sends_alerts_to_the_compose_service_and_port():
    (p,) = _docs(DOCKER / "prometheus.yml")
    (am_cfg,) = p["alerting"]["alertmanagers"]
    assert am_cfg["api_version"] == "v2" and am_cfg.get("path_prefix", "/") == "/"
    (static,) = am_cfg["static_configs"]
    (target,) = static["targets"]
    host, port = target.rsplit(":", 1)
    am = _compose()["services"][host]  # the target is a compose service name
    assert port == _flag(am["command"], "--web.listen-address").rsplit(":", 1)[1]
    assert am_cfg.get("scheme", "http") == "http" and "--web.route-prefix" not in " ".join(am["command"])


def test_alertmanager_config_resource_is_the_same_tree():
    """The Prometheus Operator's AlertmanagerConfig routes, groups, inhibits and sends as
    alertmanager.yml does, with the URLs from the example Secret's keys."""
    (crd,) = _docs(AM_CRD)
    (secret,) = _docs(AM_SECRET)
    assert crd["apiVersion"] == "monitoring.coreos.com/v1alpha1" and crd["kind"] == "AlertmanagerConfig"
    c, spec = _config(), crd["spec"]
    assert set(spec) == {"route", "inhibitRules", "receivers"}
    timing = {"group_by": "groupBy", "group_wait": "groupWait", "group_interval": "groupInterval",
              "repeat_interval": "repeatInterval", "receiver": "receiver"}

    def matchers(ms: list) -> list[tuple[str, str, str]]:  # the v1alpha1 Matcher: name, value, matchType
        assert all(set(m) == {"name", "value", "matchType"} for m in ms), ms
        return [(m["name"], m["matchType"], m["value"]) for m in ms]

    root = spec["route"]
    assert set(root) == set(timing.values()) | {"routes"}
    assert all(root[v] == c["route"][k] for k, v in timing.items())
    assert len(root["routes"]) == len(c["route"]["routes"])
    for mine, theirs in zip(root["routes"], c["route"]["routes"]):
        assert set(mine) == set(timing.values()) - {"groupBy"} | {"matchers"}
        assert all(mine[v] == theirs[k] for k, v in timing.items() if k != "group_by")
        assert matchers(mine["matchers"]) == [_matcher(m) for m in theirs["matchers"]]
    assert len(spec["inhibitRules"]) == len(c["inhibit_rules"])
    for mine, theirs in zip(spec["inhibitRules"], c["inhibit_rules"]):
        assert set(mine) <= {"sourceMatch", "targetMatch", "equal"}
        assert matchers(mine["sourceMatch"]) == [_matcher(m) for m in theirs["source_matchers"]]
        assert matchers(mine["targetMatch"]) == [_matcher(m) for m in theirs["target_matchers"]]
        assert mine.get("equal", []) == theirs.get("equal", [])
    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in c["receivers"]]
    for mine, theirs in zip(spec["receivers"], c["receivers"]):
        (hook,) = mine["webhookConfigs"]
        (their,) = theirs["webhook_configs"]
        assert set(hook) == {"urlSecret", "sendResolved", "maxAlerts"}  # no URL in the manifest
        assert hook["sendResolved"] == their["send_resolved"] and hook["maxAlerts"] == their["max_alerts"]
        assert hook["urlSecret"]["name"] == secret["metadata"]["name"]
        assert hook["urlSecret"]["key"] in secret["stringData"]
    assert all(".invalid/" in v for v in secret["stringData"].values())  # placeholders only


# -- the entrypoint and a real alertmanager ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shell_env(tmp_path: Path, alertmanager: str | None) -> tuple[list[str], dict[str, str]]:
    """The shell and PATH that run the entrypoint: busybox's applets alone when busybox is here (the
    image's shell and tools), else /bin/sh; `alertmanager` is the Debian binary under its image name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if alertmanager:
        (bin_dir / "alertmanager").symlink_to(alertmanager)
    busybox = shutil.which("busybox")
    if busybox:
        for applet in ("sh", "head", "tr", "grep", "awk", "rm"):
            (bin_dir / applet).symlink_to(busybox)
        return [str(bin_dir / "sh")], {"PATH": str(bin_dir)}
    return ["/bin/sh"], {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def _url_files(tmp_path: Path, page: str, ticket: str) -> dict[str, str]:
    (tmp_path / "page_url").write_text(page + "\n")
    (tmp_path / "ticket_url").write_text(ticket + "\r\n")  # a CRLF file works too
    return {"AM_PAGE_URL_FILE": str(tmp_path / "page_url"), "AM_TICKET_URL_FILE": str(tmp_path / "ticket_url")}


@pytest.mark.parametrize(("page", "error"), [
    ("ftp://pager.example/hook", "must start with http:// or https://"),
    ("https://pager.example/a b", "a space, a quote or a backslash"),
    ('https://pager.example/"x', "a space, a quote or a backslash"),
    (PLACEHOLDERS["page"], "still the placeholder"),
    (None, "cannot read the webhook URL file"),
])
def test_entrypoint_refuses_a_bad_or_missing_url(tmp_path, page, error):
    shell, env = _shell_env(tmp_path, None)
    env |= _url_files(tmp_path, page or "x", "https://tickets.example/hook")
    if page is None:
        (tmp_path / "page_url").unlink()
    env |= {"AM_CONFIG": str(CONFIG), "AM_RENDERED_CONFIG": str(tmp_path / "rendered.yml")}
    r = _run([*shell, str(ENTRYPOINT)], env=env)
    assert r.returncode == 2 and error in r.stderr, r.stderr
    assert not (tmp_path / "rendered.yml").exists()  # nothing started, nothing half-written


class _Webhooks:
    """A loopback HTTP server that records every POST: (path with query, JSON body)."""

    def __init__(self):
        received: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.put((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.others: list[tuple[str, dict]] = []  # notifications wait_for passed over
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, alertname: str, timeout: float) -> tuple[str, dict]:
        """The first notification that carries alertname; others seen meanwhile go to self.others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no webhook received {alertname} within {timeout} s")
            try:
                path, body = self.received.get(timeout=left)
            except queue.Empty:
                continue
            if any(a["labels"]["alertname"] == alertname for a in body["alerts"]):
                return path, body
            self.others.append((path, body))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _post_alerts(base: str, *label_sets: dict[str, str]) -> None:
    now = datetime.now(timezone.utc).isoformat()
    body = json.dumps([{"labels": ls, "annotations": {"summary": "test"}, "startsAt": now} for ls in label_sets])
    req = urllib.request.Request(f"{base}/api/v2/alerts", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def _get_alerts(base: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as r:
        return {a["labels"]["alertname"]: a for a in json.load(r)}


@contextlib.contextmanager
def _alertmanager(tmp_path: Path, webhooks: _Webhooks):
    """The real alertmanager, started by the compose entrypoint on a test copy of the config whose
    group waits are short; the URL files point at the local webhooks (the page URL with a query
    string: its & must reach the server as it is)."""
    binary = _tool("prometheus-alertmanager")
    cfg = _config()
    for route in cfg["route"]["routes"]:
        route.update(group_wait="1s", group_interval="1s")
    test_config = tmp_path / "alertmanager.yml"
    test_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    shell, env = _shell_env(tmp_path, binary)
    env |= _url_files(tmp_path, f"{webhooks.url}/page?token=a1&team=fsrec", f"{webhooks.url}/ticket")
    env |= {"AM_CONFIG": str(test_config), "AM_RENDERED_CONFIG": str(tmp_path / "rendered.yml")}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen([*shell, str(ENTRYPOINT), f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.path={tmp_path / 'data'}", "--cluster.listen-address=",
                             f"--web.external-url={base}/"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("alertmanager did not start:\n" + (tmp_path / "alertmanager.log").read_text())
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_page_reaches_the_on_call_webhook_a_ticket_the_ticket_webhook_and_inhibitions_mute(tmp_path):
    webhooks = _Webhooks()
    try:
        with _alertmanager(tmp_path, webhooks) as am:
            rendered = tmp_path / "rendered.yml"
            assert rendered.stat().st_mode & 0o077 == 0  # the URLs: readable by the server's user only
            assert f"{webhooks.url}/page?token=a1&team=fsrec" in rendered.read_text()

            # severity=page -> the on-call webhook, with the URL's query string intact
            p99 = {"alertname": "FsrecLatencyP99High", "severity": "page", "job": "fsrec-triton",
                   "instance": "triton-0:8002", "model": "fsrec", "version": "1", "quantile": "0.99"}
            t0 = time.monotonic()
            _post_alerts(am, p99)
            path, body = webhooks.wait_for("FsrecLatencyP99High", timeout=10)
            assert time.monotonic() - t0 < 10
            assert path == "/page?token=a1&team=fsrec" and body["receiver"] == "fsrec-page"
            assert body["status"] == "firing" and body["alerts"][0]["labels"] == p99

            # severity=ticket -> the ticket webhook
            store = {"alertname": "FsrecLearnerStoreErrors", "severity": "ticket", "job": "fsrec-learner",
                     "instance": "learner:9108"}
            _post_alerts(am, store)
            path, body = webhooks.wait_for("FsrecLearnerStoreErrors", timeout=10)
            assert path == "/ticket" and body["receiver"] == "fsrec-ticket"

            # every replica down: FsrecServingDown pages, the down replica's ticket is muted
            _post_alerts(am, {"alertname": "FsrecServingDown", "severity": "page"})
            time.sleep(0.5)  # the source is in the store before the target arrives
            down = {"alertname": "FsrecTritonDown", "severity": "ticket", "job": "fsrec-triton",
                    "instance": "triton-1:8002"}
            _post_alerts(am, down)
            path, _ = webhooks.wait_for("FsrecServingDown", timeout=10)
            assert path.startswith("/page?")
            state = _get_alerts(am)
            assert state["FsrecTritonDown"]["status"]["state"] == "suppressed"
            assert state["FsrecTritonDown"]["status"]["inhibitedBy"] == [state["FsrecServingDown"]["fingerprint"]]
            assert state["FsrecLatencyP99High"]["status"]["inhibitedBy"]  # a page muted by the bigger page
            assert state["FsrecLearnerStoreErrors"]["status"]["state"] == "active"  # not the learner's
            with pytest.raises(AssertionError, match="no webhook received"):
                webhooks.wait_for("FsrecTritonDown", timeout=3)  # > the ticket's 1 s group wait
            others = {a["labels"]["alertname"] for _, b in webhooks.others for a in b["alerts"]}
            assert "FsrecTritonDown" not in others
    finally:
        webhooks.close()
