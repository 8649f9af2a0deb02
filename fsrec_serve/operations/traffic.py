"""Traffic of the load tests: which host may be hit, the k mix, the histories file, and the
helpers the locustfile calls inside the Locust process.

Pure and cheap to import (stdlib only; locust is imported lazily): ``loadtests/locustfile.py``
imports this module under gevent, so never import torch here.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ..contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_MODEL_NAME
from ..errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # hosts a load test may target without opt-in
ALLOW_REMOTE_FLAG = "--allow-remote-host"  # the opt-in of `fsrec loadtest` for any other host
DEFAULT_PORTS = {"grpc": DEFAULT_GRPC_PORT, "http": DEFAULT_HTTP_PORT}
DEFAULT_K_MIX = "10:0.8,20:0.15,50:0.05"


# ---------------------------------------------------------------------------------------------
# hosts
# ---------------------------------------------------------------------------------------------
def normalize_host(host: str, protocol: str, *, allow_remote: bool = False) -> str:
    """'http://localhost:8000' / '127.0.0.1:8001' / '127.0.0.1' -> '127.0.0.1:PORT'.

    Only 127.0.0.1 and localhost are load-tested without asking: any other host (a staging
    server, or another loopback address) needs ``allow_remote=True`` (``fsrec loadtest
    --allow-remote-host``), so that nobody loads a machine by a typo.
    """
    if protocol not in DEFAULT_PORTS:
        raise ConfigError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    text = (host or "").strip()
    if not text:
        raise ConfigError("--host is empty: pass 127.0.0.1:PORT (the local Triton server) or HOST:PORT")
    parts = urlsplit(text if "://" in text else f"//{text}")
    if parts.scheme not in ("", "http", "grpc"):
        raise ConfigError(
            f"host {host!r}: scheme {parts.scheme!r} is not supported; use http://HOST:PORT "
            "or HOST:PORT (TLS gateways are out of scope for the load test)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"host {host!r} has a path or query; pass only HOST:PORT")
    name = (parts.hostname or "").lower()
    if not name:
        raise ConfigError(f"host {host!r} names no host; pass HOST:PORT")
    if name not in LOOPBACK_HOSTS and not allow_remote:
        raise ConfigError(
            f"refusing to load-test {host!r}: only {' and '.join(LOOPBACK_HOSTS)} are load-tested without "
            f"opt-in. To put load on another host (a staging server you may load), pass {ALLOW_REMOTE_FLAG}"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"host {host!r}: bad port ({e})") from None
    return f"{f'[{name}]' if ':' in name else name}:{port or DEFAULT_PORTS[protocol]}"


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
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, env_var="FSREC_LOADTEST_MODEL",
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
    parser.add_argument(ALLOW_REMOTE_FLAG, action="store_true", default=False, env_var="FSREC_LOADTEST_ALLOW_REMOTE",
                        help="allow a host other than 127.0.0.1/localhost (a staging server you may load)")


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
