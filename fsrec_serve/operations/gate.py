"""The release gate: thresholds from a gate file, judged on the rows of Locust's ``*_stats.csv``.

Pure functions (stdlib + PyYAML). Gate file (YAML)::

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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError, LoadTestError
from .traffic import DEFAULT_K_MIX, parse_k_mix

AGGREGATED = "Aggregated"  # name of Locust's total row


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
