"""Load tests: Locust, headless, against a Triton server, judged by the release gate.

``run_loadtest(LoadTestConfig(...))`` runs ``loadtests/locustfile.py`` through Locust's own CLI
in a subprocess (importing locust into a process that already imported ssl through torch or
transformers raises ``RecursionError``), writes Locust's CSV and HTML reports into
``report_dir``, then judges the final statistics against the thresholds of a gate file
(``loadtests/gate.yaml``, :mod:`.gate`). ``fsrec loadtest`` maps its arguments onto it. The
report (``gate.json``) names the host that was hit. Hosts other than 127.0.0.1/localhost need
``allow_remote=True`` (:func:`.traffic.normalize_host`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..contract import DEFAULT_MODEL_NAME
from ..errors import ConfigError, LoadTestError
from .gate import (
    AGGREGATED,
    GateReport,
    LoadProfile,
    StatsRow,
    evaluate_gate,
    load_gate_config,
    read_stats_csv,
)
from .traffic import (
    ALLOW_REMOTE_FLAG,
    format_k_mix,
    load_histories,
    normalize_host,
    parse_k_mix,
    write_histories,
)

log = logging.getLogger(__name__)

# In the source tree loadtests/ sits beside the package; an installed wheel ships it as the
# top-level package data folder ``loadtests`` (pyproject.toml), at the same relative place.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
DEFAULT_GATE = REPO_ROOT / "loadtests" / "gate.yaml"
CSV_PREFIX = "locust"  # report_dir/locust_stats.csv, locust_failures.csv, ...
HTML_NAME = "locust_report.html"
GATE_JSON = "gate.json"


# ---------------------------------------------------------------------------------------------
# the headless run
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadTestConfig:
    host: str  # the server: HOST:PORT (hosts other than 127.0.0.1/localhost need allow_remote)
    allow_remote: bool = False  # opt-in: load-test a host other than 127.0.0.1 / localhost
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
    model_name: str = DEFAULT_MODEL_NAME  # Triton model name
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
    host: str  # the host:port that was load-tested
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
    ] + ([ALLOW_REMOTE_FLAG] if cfg.allow_remote else []) + (["--repository", str(cfg.repository)] if cfg.repository else []) + (
        ["--item-map", str(cfg.item_map)] if cfg.item_map else []) + [user_class]


def run_loadtest(cfg: LoadTestConfig) -> LoadTestResult:
    """Run Locust headless against the server, write the reports, judge the gate."""
    host = normalize_host(cfg.host, cfg.protocol, allow_remote=cfg.allow_remote)
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
    return LoadTestResult(proc.returncode, host, report_dir, stats_csv, report_dir / HTML_NAME, rows, report, elapsed)
