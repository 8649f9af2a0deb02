"""Load tests and the release gate: Locust, headless, against a server on this machine.

``run_loadtest(LoadTestConfig(...))`` runs ``loadtests/locustfile.py`` through Locust's own CLI
in a subprocess (importing locust into a process that already imported ssl through torch or
transformers raises ``RecursionError``), writes Locust's CSV and HTML reports into
``report_dir``, then judges the final statistics against the thresholds of a gate file
(``loadtests/gate.yaml``): the release gate. ``fsrec loadtest`` maps its arguments onto it.

Everything else here is pure and cheap to import (stdlib + PyYAML): the gate logic works on
the rows of Locust's ``*_stats.csv``, and the locustfile imports this module for the host check,
the k mix and the histories file. Never import torch here: the locustfile runs under gevent.

Gate file (YAML)::

    p95_ms: 250              # Aggregated row: 95th percentile response time limit (ms)
    p99_ms: 500              # Aggregated row: 99th percentile limit (ms)
    max_failure_ratio: 0.001 # failures / requests
    min_requests: 100        # fewer requests => the run is inconclusive and the gate fails
    requests:                # optional: limits for single request names (Locust's "Name")
      "recommend k=50": {p99_ms: 800}
    load:                    # optional: the load profile the gate was tuned for (CLI overrides)
      users: 8
      spawn_rate: 8
      run_time: 30s
      k_mix: "10:0.8,20:0.15,50:0.05"
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError, LoadTestError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
DEFAULT_GATE = REPO_ROOT / "loadtests" / "gate.yaml"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # the only hosts a load test may target
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}  # Triton's defaults (Settings)
CSV_PREFIX = "locust"  # report_dir/locust_stats.csv, locust_failures.csv, ...
HTML_NAME = "locust_report.html"
GATE_JSON = "gate.json"
DEFAULT_K_MIX = "10:0.8,20:0.15,50:0.05"
AGGREGATED = "Aggregated"  # name of Locust's total row


# ---------------------------------------------------------------------------------------------
# hosts
# ---------------------------------------------------------------------------------------------
def normalize_host(host: str, protocol: str) -> str:
    """'http://localhost:8000' / '127.0.0.1:8001' / '127.0.0.1' -> '127.0.0.1:PORT'.

    Refuses every host but 127.0.0.1 and localhost: load tests must never hit (or be mistaken
    for an attack on) another machine.
    """
    if protocol not in DEFAULT_PORTS:
        raise ConfigError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    text = (host or "").strip()
    if not text:
        raise ConfigError("--host is empty: pass 127.0.0.1:PORT (the local Triton server)")
    parts = urlsplit(text if "://" in text else f"//{text}")
    if parts.scheme not in ("", "http", "grpc"):
        raise ConfigError(
            f"host {host!r}: scheme {parts.scheme!r} is not supported; use http://127.0.0.1:PORT "
            "or 127.0.0.1:PORT (TLS gateways are out of scope for the local load test)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"host {host!r} has a path or query; pass only 127.0.0.1:PORT")
    name = (parts.hostname or "").lower()
    if name not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"refusing to load-test {host!r}: only {' and '.join(LOOPBACK_HOSTS)} are allowed. "
            "Run the load test on the machine that serves (e.g. over SSH) and pass 127.0.0.1:PORT"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"host {host!r}: bad port ({e})") from None
    return f"{name}:{port or DEFAULT_PORTS[protocol]}"


# ---------------------------------------------------------------------------------------------
# traffic: the k mix and the histories file
# ---------------------------------------------------------------------------------------------
def parse_k_mix(text: str) -> list[tuple[int, float]]:
    """'10:0.8,20:0.15,50:0.05' -> [(10, 0.8), (20, 0.15), (50, 0.05)] with weights summing to 1.

    A bare '10' means k=10 always. Weights are relative (normalised here)."""
    if not text or not text.strip():
        raise ConfigError("k mix is empty: pass e.g. '10:0.8,20:0.2'")
    mix: dict[int, float] = {}
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?::\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?))?", part)
        if not m:
            raise ConfigError(f"k mix entry {part!r} is not 'K' or 'K:WEIGHT' (e.g. '10:0.8')")
        k, w = int(m.group(1)), float(m.group(2)) if m.group(2) is not None else 1.0
        if k < 1:
            raise ConfigError(f"k mix: k must be >= 1, got {k}")
        if w < 0 or not math.isfinite(w):
            raise ConfigError(f"k mix: weight of k={k} must be a finite number >= 0, got {w}")
        mix[k] = mix.get(k, 0.0) + w
    total = sum(mix.values())
    if total <= 0:
        raise ConfigError(f"k mix {text!r}: weights sum to 0")
    return [(k, w / total) for k, w in sorted(mix.items())]


def format_k_mix(mix: Sequence[tuple[int, float]]) -> str:
    return ",".join(f"{k}:{w:.6g}" for k, w in mix)


def sample_k(mix: Sequence[tuple[int, float]], rng: random.Random) -> int:
    ks, ws = zip(*mix)
    return rng.choices(ks, weights=ws, k=1)[0]


def load_histories(path: str | Path) -> list[list[str]]:
    """Read a histories file (written by :func:`write_histories`): raw item ids, newest last."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"histories file {path} does not exist: write it with fsrec loadtest (it is written "
            "from the data set when --histories is not given) or pass --histories"
        )
    data = json.loads(path.read_text())
    hists = data["histories"] if isinstance(data, dict) else data
    out = [[str(i) for i in h] for h in hists if h]
    if not out:
        raise ConfigError(f"histories file {path} holds no non-empty history")
    return out


def write_histories(path: str | Path, dataset: str = "ml-100k", data_dir: str | Path | None = None,
                    seed: int = 0, max_len: int = 200) -> Path:
    """Write the histories of the data set's held-out (cold) users as raw item ids.

    The cold users of the standard split (``SplitConfig(seed)``) never took part in
    pretraining; each becomes one history (newest last, the latest ``max_len`` kept), so a load
    test that samples users uniformly reproduces their real length distribution."""
    from ..data import SplitConfig, load_dataset, make_splits
    from ..settings import get_settings

    data = load_dataset(dataset, data_dir if data_dir is not None else get_settings().data_dir)
    splits = make_splits(data, SplitConfig(seed=seed))
    users = splits.cold_users or splits.warm
    hists = [splits.item_map.raws(u.items[-max_len:]) for u in users if len(u.items)]
    lengths = sorted(len(u.items) for u in users)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "dataset": dataset,
        "source": f"cold (held-out) users of SplitConfig(seed={seed})" if splits.cold_users
        else f"warm users of SplitConfig(seed={seed})",
        "n_users": len(hists),
        "max_len": max_len,
        "length_quantiles": {q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]
                             for q in (0.0, 0.5, 0.9, 1.0)} if lengths else {},
        "histories": hists,
    }) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# helpers for locustfiles (called inside the Locust process; locust is imported lazily)
# ---------------------------------------------------------------------------------------------
def add_locust_arguments(parser) -> None:
    """The custom options ``run_loadtest`` passes to a locustfile (Locust's configargparse
    parser; each also readable from an ``FSREC_LOADTEST_*`` environment variable)."""
    parser.add_argument("--histories", default="", env_var="FSREC_LOADTEST_HISTORIES",
                        help="JSON file of histories (raw item ids, newest last) to sample users from")
    parser.add_argument("--k-mix", default=DEFAULT_K_MIX, env_var="FSREC_LOADTEST_K_MIX",
                        help="top-k mix, e.g. '10:0.8,20:0.15,50:0.05'")
    parser.add_argument("--model-name", default="fsrec", env_var="FSREC_LOADTEST_MODEL",
                        help="Triton model name")
    parser.add_argument("--think-time", type=float, default=0.0, env_var="FSREC_LOADTEST_THINK_TIME",
                        help="seconds a user waits between two requests")
    parser.add_argument("--traffic-seed", type=int, default=0, env_var="FSREC_LOADTEST_SEED",
                        help="seed of the history and k sampling")
    parser.add_argument("--repository", default="", env_var="FSREC_LOADTEST_REPOSITORY",
                        help="served model repository (the client reads item_map.json and limits from it)")
    parser.add_argument("--item-map", default="", env_var="FSREC_LOADTEST_ITEM_MAP",
                        help="item_map.json of the served model (instead of --repository)")
    parser.add_argument("--retries", type=int, default=0, env_var="FSREC_LOADTEST_RETRIES",
                        help="client retries on unavailable/overloaded (0 = every error counts)")
    parser.add_argument("--request-timeout", type=float, default=10.0, env_var="FSREC_LOADTEST_TIMEOUT",
                        help="client timeout per request, seconds")


def install_final_stats_writer(environment) -> None:
    """Rewrite ``<csv prefix>_stats.csv`` / ``_failures.csv`` with the FINAL statistics when the
    Locust process exits.

    Locust's CSV writer refreshes the files once a second and does not write them again at
    shutdown, so the last second of a run is missing (a 3 s run lost a third of its requests).
    The gate must judge the whole run: this hook runs at interpreter exit, after Locust closed
    its own handles, and writes the same columns through Locust's ``StatsCSV``."""
    import atexit

    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return

    def _write() -> None:
        from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

        w = StatsCSV(environment, PERCENTILES_TO_REPORT)
        with open(f"{prefix}_stats.csv", "w", newline="") as f:
            w.requests_csv(csv.writer(f))
        with open(f"{prefix}_failures.csv", "w", newline="") as f:
            w.failures_csv(csv.writer(f))

    atexit.register(_write)


# ---------------------------------------------------------------------------------------------
# the gate: pure functions over Locust's stats CSV
# ---------------------------------------------------------------------------------------------
@dataclass
class Thresholds:
    p95_ms: float | None = None  # 95th percentile response time limit (ms); None = unchecked
    p99_ms: float | None = None  # 99th percentile response time limit (ms); None = unchecked
    max_failure_ratio: float | None = None  # failures / requests limit; None = unchecked
    min_requests: int = 0  # a row with fewer requests fails as inconclusive


@dataclass
class LoadProfile:
    users: int = 8  # concurrent Locust users (closed loop: each waits for its answer)
    spawn_rate: float = 8.0  # users started per second
    run_time: str = "30s"  # Locust duration ('10s', '2m')
    k_mix: str = DEFAULT_K_MIX  # top-k of each request drawn from this mix
    think_time_s: float = 0.0  # pause of a user between two requests (0 = back to back)


@dataclass
class GateConfig:
    aggregate: Thresholds = field(default_factory=Thresholds)  # for Locust's Aggregated row
    requests: dict[str, Thresholds] = field(default_factory=dict)  # by request name
    load: LoadProfile = field(default_factory=LoadProfile)  # default load profile of the gate
    source: str = ""  # where the config came from (for messages)


def _thresholds(d: dict, where: str) -> Thresholds:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of thresholds, got {type(d).__name__}")
    known = {f.name for f in fields(Thresholds)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{where}: unknown threshold(s) {sorted(unknown)}; known: {sorted(known)}")
    t = Thresholds(**d)
    for name in ("p95_ms", "p99_ms", "max_failure_ratio"):
        v = getattr(t, name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}: {name} must be a number >= 0, got {v!r}")
            setattr(t, name, float(v))
    if t.max_failure_ratio is not None and t.max_failure_ratio > 1:
        raise ConfigError(f"{where}: max_failure_ratio is a ratio in [0, 1], got {t.max_failure_ratio}")
    if isinstance(t.min_requests, bool) or not isinstance(t.min_requests, int) or t.min_requests < 0:
        raise ConfigError(f"{where}: min_requests must be an integer >= 0, got {t.min_requests!r}")
    return t


def gate_config_from_dict(d: dict, source: str = "<dict>") -> GateConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"gate config {source}: expected a mapping at the top level")
    d = dict(d)
    requests = d.pop("requests", None) or {}
    load = d.pop("load", None) or {}
    agg = _thresholds(d, f"gate config {source}")
    if agg.p95_ms is None and agg.p99_ms is None and agg.max_failure_ratio is None:
        raise ConfigError(f"gate config {source} sets no threshold: set p95_ms, p99_ms or max_failure_ratio")
    if not isinstance(requests, dict):
        raise ConfigError(f"gate config {source}: 'requests' must map request names to thresholds")
    per = {str(k): _thresholds(v, f"gate config {source}, requests[{k!r}]") for k, v in requests.items()}
    known = {f.name for f in fields(LoadProfile)}
    if not isinstance(load, dict) or set(load) - known:
        raise ConfigError(f"gate config {source}: 'load' accepts only {sorted(known)}")
    profile = LoadProfile(**load)
    parse_k_mix(profile.k_mix)  # validate early
    return GateConfig(aggregate=agg, requests=per, load=profile, source=source)


def load_gate_config(path: str | Path) -> GateConfig:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"gate file {path} does not exist: pass --gate loadtests/gate.yaml or a copy of it")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"gate file {path} is not valid YAML: {e}") from None
    return gate_config_from_dict(d or {}, str(path))


@dataclass
class StatsRow:
    """One row of Locust's ``*_stats.csv`` (times in ms)."""

    type: str  # request type ("grpc", "http"); "" for the Aggregated row
    name: str  # request name, "Aggregated" for the total
    requests: int  # requests, failed ones included
    failures: int  # failed requests
    median_ms: float | None
    avg_ms: float | None
    rps: float  # requests per second over the run
    percentiles: dict[str, float | None]  # "50%", "95%", "99%", ... -> ms (Locust rounds them)

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def pct(self, q: str) -> float | None:
        return self.percentiles.get(q)


def _num(text: str) -> float | None:
    text = (text or "").strip()
    if text in ("", "N/A", "nan"):
        return None
    return float(text)


def parse_stats_csv(lines: Iterable[str]) -> list[StatsRow]:
    """Parse the text of Locust's ``*_stats.csv``."""
    reader = csv.DictReader(lines)
    need = {"Type", "Name", "Request Count", "Failure Count", "95%", "99%"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise LoadTestError(
            f"not a Locust stats CSV: columns {reader.fieldnames} lack {sorted(need - set(reader.fieldnames or []))}"
        )
    pct_cols = [c for c in reader.fieldnames if c.endswith("%")]
    rows = []
    for r in reader:
        rows.append(StatsRow(
            type=r["Type"] or "", name=r["Name"], requests=int(float(r["Request Count"] or 0)),
            failures=int(float(r["Failure Count"] or 0)), median_ms=_num(r.get("Median Response Time", "")),
            avg_ms=_num(r.get("Average Response Time", "")), rps=_num(r.get("Requests/s", "")) or 0.0,
            percentiles={c: _num(r[c]) for c in pct_cols},
        ))
    return rows


def read_stats_csv(path: str | Path) -> list[StatsRow]:
    path = Path(path)
    if not path.exists():
        raise LoadTestError(f"Locust wrote no stats file {path}: see the locust log next to it")
    with path.open(newline="") as f:
        return parse_stats_csv(f)


@dataclass
class Check:
    scope: str  # "Aggregated" or a request name
    metric: str  # "p95_ms", "p99_ms", "failure_ratio", "requests"
    value: float | None  # measured (None = no data)
    limit: float  # threshold
    passed: bool

    def describe(self) -> str:
        op = ">=" if self.metric == "requests" else "<="
        val = "n/a" if self.value is None else f"{self.value:.4g}"
        mark = "ok  " if self.passed else "FAIL"
        return f"{mark} {self.scope}: {self.metric} = {val} (limit {op} {self.limit:g})"


@dataclass
class GateReport:
    passed: bool
    checks: list[Check]

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        head = "release gate PASSED" if self.passed else "release gate FAILED"
        return "\n".join([head] + ["  " + c.describe() for c in self.checks])

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def check_row(row: StatsRow | None, t: Thresholds, scope: str) -> list[Check]:
    """The checks of one row against one set of thresholds (a missing row = no requests)."""
    n = row.requests if row else 0
    checks = []
    if t.min_requests:
        checks.append(Check(scope, "requests", float(n), float(t.min_requests), n >= t.min_requests))
    if t.max_failure_ratio is not None:
        ratio = row.failure_ratio if row and n else None
        # no request at all is not a pass: a dead server must not slip through the gate
        checks.append(Check(scope, "failure_ratio", ratio, t.max_failure_ratio,
                            ratio is not None and ratio <= t.max_failure_ratio))
    for metric, col in (("p95_ms", "95%"), ("p99_ms", "99%")):
        limit = getattr(t, metric)
        if limit is None:
            continue
        value = row.pct(col) if row and n else None
        checks.append(Check(scope, metric, value, limit, value is not None and value <= limit))
    return checks


def evaluate_gate(rows: Sequence[StatsRow], config: GateConfig) -> GateReport:
    """Judge Locust's final statistics: every threshold of the Aggregated row and of each named
    request must hold. Missing data (no requests, a listed request never sent) fails."""
    by_name: dict[str, StatsRow] = {}
    for r in rows:
        if r.name == AGGREGATED and not r.type:
            by_name[AGGREGATED] = r
        elif r.name in by_name and r.name != AGGREGATED:  # same name, two types: merge is ambiguous
            raise LoadTestError(f"request name {r.name!r} appears under two types; give requests unique names")
        else:
            by_name[r.name] = r
    checks = check_row(by_name.get(AGGREGATED), config.aggregate, AGGREGATED)
    for name, t in config.requests.items():
        checks += check_row(by_name.get(name), t, name)
    return GateReport(passed=all(c.passed for c in checks), checks=checks)


# ---------------------------------------------------------------------------------------------
# the headless run
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadTestConfig:
    host: str  # the server: 127.0.0.1:PORT or localhost:PORT (anything else is refused)
    protocol: str = "grpc"  # "grpc" (GrpcRecommenderUser) or "http" (HttpRecommenderUser)
    gate: Path | None = DEFAULT_GATE  # thresholds file; None = report only, no gate
    report_dir: Path = Path("loadtests/reports")  # CSV, HTML, gate.json and the locust log go here
    users: int | None = None  # concurrent users; None = the gate's load.users
    spawn_rate: float | None = None  # users started per second; None = the gate's
    run_time: str | None = None  # '10s', '1m'; None = the gate's
    k_mix: str | None = None  # '10:0.8,20:0.2'; None = the gate's
    think_time_s: float | None = None  # pause between a user's requests; None = the gate's
    histories: Path | None = None  # JSON histories file; None = written from the data set
    dataset: str = "ml-100k"  # data set whose held-out users make the histories
    data_dir: Path | None = None  # data folder (env FSREC_DATA_DIR)
    model_name: str = "fsrec"  # Triton model name
    repository: Path | None = None  # served model repository: the client reads item_map.json from it
    item_map: Path | None = None  # or the served model's item_map.json directly
    retries: int = 0  # client retries on unavailable/overloaded (0 = every error is a failure)
    request_timeout_s: float = 10.0  # client timeout per request
    locustfile: Path = DEFAULT_LOCUSTFILE  # the Locust file to run
    seed: int = 0  # traffic seed (history and k sampling)
    timeout_s: float | None = None  # kill Locust after this long; None = run time + 60 s


@dataclass
class LoadTestResult:
    returncode: int  # Locust's exit code (it is told not to fail on request errors)
    report_dir: Path
    stats_csv: Path
    html: Path
    rows: list[StatsRow]
    gate: GateReport | None  # None when no gate file was given
    seconds: float

    @property
    def passed(self) -> bool:
        return self.gate.passed if self.gate else True

    def aggregated(self) -> StatsRow | None:
        return next((r for r in self.rows if r.name == AGGREGATED and not r.type), None)


def parse_run_time(text: str) -> float:
    """Locust's '1h2m3s' / '90s' / '2m' / '30' -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not m or not any(m.groups()):
        raise ConfigError(f"run time {text!r} is not like '10s', '2m' or '1h30m'")
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


def locust_command(cfg: LoadTestConfig, profile: LoadProfile, host: str, histories: Path,
                   report_dir: Path) -> list[str]:
    user_class = {"grpc": "GrpcRecommenderUser", "http": "HttpRecommenderUser"}[cfg.protocol]
    return [
        sys.executable, "-m", "locust", "-f", str(cfg.locustfile), "--headless",
        "--host", host, "--users", str(profile.users), "--spawn-rate", str(profile.spawn_rate),
        "--run-time", profile.run_time, "--stop-timeout", "5",
        "--csv", str(report_dir / CSV_PREFIX), "--html", str(report_dir / HTML_NAME),
        "--exit-code-on-error", "0", "--only-summary", "--loglevel", "WARNING",
        "--histories", str(histories), "--k-mix", profile.k_mix,
        "--model-name", cfg.model_name, "--think-time", str(profile.think_time_s),
        "--traffic-seed", str(cfg.seed),
        "--retries", str(cfg.retries), "--request-timeout", str(cfg.request_timeout_s),
    ] + (["--repository", str(cfg.repository)] if cfg.repository else []) + (
        ["--item-map", str(cfg.item_map)] if cfg.item_map else []) + [user_class]


def run_loadtest(cfg: LoadTestConfig) -> LoadTestResult:
    """Run Locust headless against the local server, write the reports, judge the gate."""
    host = normalize_host(cfg.host, cfg.protocol)
    gate = load_gate_config(cfg.gate) if cfg.gate is not None else None
    base = gate.load if gate else LoadProfile()
    profile = LoadProfile(
        users=cfg.users if cfg.users is not None else base.users,
        spawn_rate=cfg.spawn_rate if cfg.spawn_rate is not None else base.spawn_rate,
        run_time=cfg.run_time if cfg.run_time is not None else base.run_time,
        k_mix=cfg.k_mix if cfg.k_mix is not None else base.k_mix,
        think_time_s=cfg.think_time_s if cfg.think_time_s is not None else base.think_time_s,
    )
    if profile.users < 1:
        raise ConfigError(f"users must be >= 1, got {profile.users}")
    if profile.spawn_rate <= 0:
        raise ConfigError(f"spawn rate must be > 0, got {profile.spawn_rate}")
    if profile.think_time_s < 0:
        raise ConfigError(f"think time must be >= 0, got {profile.think_time_s}")
    seconds = parse_run_time(profile.run_time)
    if seconds <= 0:
        raise ConfigError("run time must be > 0")
    profile.k_mix = format_k_mix(parse_k_mix(profile.k_mix))
    if cfg.repository is None and cfg.item_map is None:
        raise ConfigError("pass --repository (the served model repository) or --item-map: the "
                          "client maps the histories' raw item ids with the model's item_map.json")
    for what, p in (("repository", cfg.repository), ("item map", cfg.item_map)):
        if p is not None and not Path(p).exists():
            raise ConfigError(f"{what} {p} does not exist")
    if cfg.retries < 0 or cfg.request_timeout_s <= 0:
        raise ConfigError("retries must be >= 0 and the request timeout > 0")
    if not Path(cfg.locustfile).exists():
        raise ConfigError(f"locustfile {cfg.locustfile} not found: pass --locustfile (it lives in "
                          "loadtests/locustfile.py of the source tree)")

    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(report_dir.glob(f"{CSV_PREFIX}_*.csv")) + [report_dir / HTML_NAME, report_dir / GATE_JSON]:
        stale.unlink(missing_ok=True)
    histories = Path(cfg.histories) if cfg.histories else write_histories(
        report_dir / "histories.json", cfg.dataset, cfg.data_dir, seed=cfg.seed)
    load_histories(histories)  # fail here, clearly, rather than inside Locust

    cmd = locust_command(cfg, profile, host, histories, report_dir)
    env = dict(os.environ)
    root = str(REPO_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = report_dir / "locust.log"
    timeout = cfg.timeout_s if cfg.timeout_s is not None else seconds + 60
    log.info("locust: %s users, %s/s, %s, %s on %s (k mix %s)", profile.users, profile.spawn_rate,
             profile.run_time, cfg.protocol, host, profile.k_mix)
    t0 = time.perf_counter()
    with log_path.open("w") as logf:
        try:
            proc = subprocess.run(cmd, check=False, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"Locust did not finish within {timeout:.0f} s (log: {log_path}); "
                                "raise --timeout or shorten --run-time") from None
    elapsed = time.perf_counter() - t0
    stats_csv = report_dir / f"{CSV_PREFIX}_stats.csv"
    if proc.returncode != 0 or not stats_csv.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise LoadTestError(f"Locust exited with code {proc.returncode} (log: {log_path}):\n{tail}")
    rows = read_stats_csv(stats_csv)
    report = evaluate_gate(rows, gate) if gate else None
    (report_dir / GATE_JSON).write_text(json.dumps({
        "host": host, "protocol": cfg.protocol, "profile": asdict(profile),
        "gate_file": str(cfg.gate) if cfg.gate else None,
        "gate": report.to_dict() if report else None,
        "seconds": elapsed,
    }, indent=2) + "\n")
    return LoadTestResult(proc.returncode, report_dir, stats_csv, report_dir / HTML_NAME, rows, report, elapsed)
