"""Soak and fault run of the ``cpu`` target: a long closed-loop load through real tritonserver,
memory sampled as it goes, and a python-backend stub killed in the middle of the load.

    python -m bench.soak                          # 200,000 requests at concurrency 16 (issue 12.5)
    python -m bench.soak --requests 20000         # shorter run (the size is in the results)

What it does:
- model: the ML-100K model shape of ``default_model_config`` with untrained weights (serving cost
  does not depend on what the weights learned), exported with Optimum, ``cpu`` repository;
- server: ``fsrec_serve.serving.serve`` with its model watcher on (what ``fsrec serve`` runs), which
  reloads a model whose stub died (Triton 2.51 does not restart a killed stub by itself);
- load: ``--concurrency`` threads, each a gRPC ``RecommenderClient`` sending one held-out (cold)
  user's raw history per request, k=10, back to back, until ``--requests`` are done;
- every ``--sample-s`` seconds: RSS of tritonserver and of its stubs (psutil);
- at ``--kill-at`` x requests: SIGKILL one stub; requests fail until the watcher's reload.

Rows (protocol ``soak``, method ``triton-cpu``): ``requests``; ``errors`` (failed requests outside
the kill window; goal 0); ``rss_growth`` (tritonserver + stubs, last sample before the kill over
the first sample after warm-up, minus 1; goal <= 0.05); ``stub_kill_recovery_s`` (kill -> last
failed request); ``throughput_rps``. The RSS timeline and the watcher's reload are in ``details``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import write_results

DATASET = "ml-100k"
METHOD = "triton-cpu"


@dataclass
class SoakConfig:
    requests: int = 200_000  # total requests of the load
    concurrency: int = 16  # closed-loop client threads
    kill_at: float = 0.5  # fraction of the requests after which one stub is killed (0 = no kill)
    sample_s: float = 10.0  # RSS sampling period
    warmup_frac: float = 0.1  # share of the pre-kill requests that is warm-up (excluded from rss_growth)
    k: int = 10  # top-k of every request
    watch_interval_s: float = 1.0  # the launcher's model watcher period
    work: Path | None = None  # work folder (default: a temp folder)
    out: str = "soak"  # bench/results/<out>.json


@dataclass
class Counters:
    done: int = 0  # requests answered or failed
    failures: list[float] = field(default_factory=list)  # monotonic times of failed requests
    errors: list[str] = field(default_factory=list)  # first error messages (a few)
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare_repository(work: Path) -> tuple[Path, list[list[str]]]:
    """(cpu repository of an untrained ML-100K-shaped model, cold users' raw histories)."""
    import torch

    from exporters import build_model_repository, export_onnx
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.training import build_model, default_model_config

    splits = make_splits(load_dataset(DATASET), SplitConfig(seed=0))
    torch.manual_seed(0)
    cfg = default_model_config(splits)
    model = build_model(splits, cfg).eval()
    export = work / "export"
    export_onnx(model, export, source="bench.soak (untrained weights, ML-100K shape)")
    repo = work / "repository"
    build_model_repository(repo, export, target="cpu", version=1, overwrite=True)
    users = splits.cold_users or splits.warm
    hist = [splits.item_map.raws(u.items[-cfg.max_seq_len:]) for u in users if len(u.items)]
    return repo, hist


def _sample(server_pid: int, t_s: float, c: Counters, **extra) -> dict:
    """RSS (MB) of tritonserver and of its live stub processes, and how many stubs run."""
    import psutil

    try:
        proc = psutil.Process(server_pid)
        stubs = [c for c in proc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
        srv, stub_mb = proc.memory_info().rss / 2**20, sum(s.memory_info().rss for s in stubs) / 2**20
    except psutil.Error:
        srv, stub_mb, stubs = 0.0, 0.0, []
    return {"t_s": round(t_s, 1), "requests": c.done, "failures": len(c.failures), "rss_server_mb": round(srv, 1),
            "rss_stubs_mb": round(stub_mb, 1), "stubs": len(stubs), **extra}


def _worker(i: int, server, hist, cfg: SoakConfig, c: Counters, stop: threading.Event) -> None:
    from fsrec_serve.client import RecommenderClient

    rng = random.Random(i)
    with RecommenderClient.for_server(server, "grpc", retries=0, timeout_s=30) as client:
        while not stop.is_set():
            with c.lock:
                if c.done >= cfg.requests:
                    return
                c.done += 1
            try:
                client.recommend(rng.choice(hist), k=cfg.k)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with c.lock:
                    c.failures.append(time.monotonic())
                    if len(c.errors) < 5:
                        c.errors.append(f"{type(e).__name__}: {str(e)[:200]}")


def run(cfg: SoakConfig) -> dict:
    from fsrec_serve.serving import serve
    from fsrec_serve.serving.watch import stub_pids

    work = cfg.work or Path(tempfile.mkdtemp(prefix="fsrec-soak-"))
    repo, hist = prepare_repository(work)
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=-1, log_file=work / "tritonserver.log",
                   startup_timeout=300)
    c, stop, samples = Counters(), threading.Event(), []
    kill: dict = {}
    try:
        watcher = server.watch(cfg.watch_interval_s)
        threads = [threading.Thread(target=_worker, args=(i, server, hist, cfg, c, stop), daemon=True)
                   for i in range(cfg.concurrency)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        next_sample = t0
        while any(t.is_alive() for t in threads):
            now = time.monotonic()
            if now >= next_sample:
                samples.append(_sample(server.pid, now - t0, c))
                next_sample += cfg.sample_s
            if cfg.kill_at and not kill and c.done >= cfg.kill_at * cfg.requests:
                samples.append(_sample(server.pid, now - t0, c, before_kill=True))
                pid = min(stub_pids(server.pid))
                os.kill(pid, signal.SIGKILL)
                kill = {"t": time.monotonic(), "t_s": round(time.monotonic() - t0, 1), "pid": pid,
                        "requests": c.done, "failures_before": len(c.failures)}
            time.sleep(0.05)
        seconds = time.monotonic() - t0
    finally:
        stop.set()
        server.stop()
    pre = [s for s in samples if not kill or s["t_s"] <= kill["t_s"]]
    warm = [s for s in pre if s["requests"] >= cfg.warmup_frac * (kill.get("requests") or cfg.requests)]
    total = lambda s: s["rss_server_mb"] + s["rss_stubs_mb"]  # noqa: E731
    growth = total(warm[-1]) / total(warm[0]) - 1 if len(warm) >= 2 else None
    after = [f for f in c.failures if kill and f >= kill["t"]]
    recovery = (max(after) - kill["t"]) if after else 0.0
    errors = len(c.failures) - len(after)
    return {
        "requests": c.done, "errors": errors, "errors_in_kill_window": len(after), "seconds": seconds,
        "throughput_rps": c.done / seconds, "rss_growth": growth, "stub_kill_recovery_s": recovery if kill else None,
        "kill": {k: v for k, v in kill.items() if k != "t"}, "samples": samples, "first_errors": c.errors,
        "watcher": [vars(r) for r in watcher.recoveries], "concurrency": cfg.concurrency,
        "histories": len(hist), "warmup_samples_skipped": len(pre) - len(warm),
    }


def result_rows(r: dict) -> list[dict]:
    base = {"dataset": DATASET, "protocol": "soak", "method": METHOD, "concurrency": r["concurrency"],
            "std": 0.0, "n": 1}
    rows = [{**base, "metric": m, "mean": float(r[m])}
            for m in ("requests", "errors", "rss_growth", "stub_kill_recovery_s", "throughput_rps")
            if r[m] is not None]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=SoakConfig.requests)
    p.add_argument("--concurrency", type=int, default=SoakConfig.concurrency)
    p.add_argument("--kill-at", type=float, default=SoakConfig.kill_at, help="0 = no stub kill")
    p.add_argument("--sample-s", type=float, default=SoakConfig.sample_s)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=SoakConfig.out, help="results name (bench/results/<out>.json)")
    a = p.parse_args(argv)
    cfg = SoakConfig(requests=a.requests, concurrency=a.concurrency, kill_at=a.kill_at, sample_s=a.sample_s,
                     work=Path(a.work) if a.work else None, out=a.out)
    r = run(cfg)
    notes = [
        f"{r['requests']} requests at concurrency {cfg.concurrency}, one cold ML-100K user per request (k={cfg.k}), "
        f"{r['seconds']:.0f} s on a shared 2-core CPU (load generator and server share the cores)",
        "model: ML-100K shape of default_model_config, untrained weights (serving cost does not depend on them)",
        f"stub killed (SIGKILL) after {r['kill'].get('requests')} requests; requests routed to the dead stub fail "
        "until the launcher's model watcher reloads the model (Triton 2.51 does not restart the stub itself)",
        "errors: failed requests outside the kill window; rss_growth: tritonserver + stubs, last sample before the "
        "kill over the first sample after warm-up",
    ]
    command = "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_results(cfg.out, command.strip(), result_rows(r), extra={"notes": notes, "details": r})
    print(f"wrote {path}")
    for row in result_rows(r):
        print(f"  {row['metric']}: {row['mean']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
