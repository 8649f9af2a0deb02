"""The live loop through the real stack (tritonserver + store + learner), on ML-100K:

- ``serving-by-user``: throughput and p99 of ``fsrec_user`` (store lookup + ranker by BLS) vs
  the ranker by item ids, the same users' histories, concurrency 16, one server, one run; and the
  server's CPU per request (tritonserver + stubs, /proc);
- ``freshness``: events recorded through ``fsrec_events`` at a sustained rate by new users (the
  cold users' first events, in order), a learner process (``fsrec learn``) fitting; freshness =
  time from sending an event until its user's parameters fitted on it are readable in the store
  (polled every 20 ms), p50/p99, embedded SQLite store;
- ``faults``: a replay of events through Triton into a redis store while the learner,
  tritonserver and redis-server are each killed with SIGKILL and restarted; the client resends a
  batch that failed with the same event ids (at-least-once delivery, idempotent store). Counts
  events lost, applied twice, and answers that used parameters of another model.

``python -m bench.live`` -> bench/results/replay-live.json (protocols freshness,
serving-by-user, faults). Registered in bench/goals.py (issue 17).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import write_results
from bench.serving_measure import group_cpu_s

EVENTS_RATE = 200.0  # events per second the freshness run sustains (the goal's rate)


def prepare(work: Path, train_seconds: float):
    """ML-100K, the default causal model trained for ``train_seconds`` on warm users, exported,
    a repository with the ranker and the front models. -> (splits, model_dir, repo)."""
    import torch

    from exporters import build_model_repository, export_onnx
    from exporters.user_repository import build_user_models, popularity_of
    from fsrec_serve.data import SplitConfig, load_interactions, make_splits, preset_spec
    from fsrec_serve.training import pretrain
    from fsrec_serve.training.pretrain import default_model_config, default_train_config

    torch.set_num_threads(1)
    splits = make_splits(load_interactions(preset_spec("ml-100k")), SplitConfig(seed=0))
    res = pretrain(splits, default_model_config(splits, "causal"),
                   default_train_config(splits, "causal", epochs=40, seed=0, output_dir=str(work / "pre"),
                                        max_train_seconds=train_seconds))
    model = res.model.eval()
    model.item_map = splits.item_map
    model.save_pretrained(work / "served")
    exp = export_onnx(model, work / "export", validate_with=[e.history for e in splits.loo_valid()[:64]])
    repo = work / "repo"
    build_model_repository(repo, exp.output_dir, target="cpu", version=1)
    build_user_models(repo, popularity_of([s.items for s in splits.loo_train()], exp.meta.max_top_k))
    return splits, work / "served", repo


def _load(fn, n: int, conc: int) -> tuple[float, float]:
    """``n`` calls of ``fn(i)`` from ``conc`` threads -> (requests/s, p99 ms)."""
    lat = []

    def one(i):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(conc) as ex:
        list(ex.map(one, range(n)))
    return n / (time.perf_counter() - t0), float(np.percentile(lat, 99) * 1000)


def serving_by_user(server, store_url: str, splits, n: int, conc: int = 16) -> list[dict]:
    """Warm users' histories recorded, then the same users asked by id and by item ids."""
    from fsrec_serve.client import RecommenderClient

    seqs = [s for s in splits.loo_train() if len(s) >= 5][:300]
    raws = {f"warm-{s.user}": splits.item_map.raws(s.items[-50:]) for s in seqs}
    rows = []
    with RecommenderClient.for_server(server) as c:
        for u, items in raws.items():
            c.record_many([(u, it, float(j), f"{u}-{j}") for j, it in enumerate(items)])
        users = list(raws)
        _drain(store_url)
        c.recommend_for_user(users[0])
        c.recommend(raws[users[0]])
        for name, fn in (("by-items", lambda i: c.recommend(raws[users[i % len(users)]], k=10)),
                         ("by-user", lambda i: c.recommend_for_user(users[i % len(users)], k=10))):
            cpu0 = group_cpu_s(server.pid)
            rps, p99 = _load(fn, n, conc)
            cpu = (group_cpu_s(server.pid) - cpu0) / n * 1000
            rows += [{"dataset": "ml-100k", "protocol": "serving-by-user", "method": name, "metric": m,
                      "mean": v, "std": 0.0, "n": 1, "concurrency": conc, "requests": n, "client": "python-grpc-threads"}
                     for m, v in (("throughput_rps", rps), ("p99_ms", p99), ("cpu_ms_per_request", cpu))]
    by = {(r["method"], r["metric"]): r["mean"] for r in rows}
    rows.append({"dataset": "ml-100k", "protocol": "serving-by-user", "method": "by-user", "metric": "throughput_ratio",
                 "mean": by[("by-user", "throughput_rps")] / by[("by-items", "throughput_rps")], "std": 0.0, "n": 1,
                 "concurrency": conc, "baseline": "by-items"})
    return rows


def _drain(store_url: str) -> None:
    """Apply every pending event (no fit) so that by-user requests see the full histories."""
    from fsrec_serve.store import open_store

    with open_store(store_url) as store:
        while batch := store.pending("bench", 5000):
            store.apply("bench", batch)


PER_USER_STEPS: list = []  # --per-user-steps of the learners started here ([] = the CLI default)
CONTEXT: list = []  # --context of the learners started here ([] = the CLI default, window)


def learner_cmd(model_dir: Path, store: str, fit_interval: float) -> list[str]:
    steps = ["--per-user-steps", *map(str, PER_USER_STEPS)] if PER_USER_STEPS else []
    steps += ["--context", CONTEXT[0]] if CONTEXT else []
    return [sys.executable, "-m", "fsrec_serve.cli", "learn", "--model-dir", str(model_dir), "--store", store,
            "--fit-interval", str(fit_interval), "--metrics-port", "-1", *steps]


def freshness(server, store_url: str, splits, model_dir: Path, seconds: float, rate: float,
              fit_interval: float) -> list[dict]:
    """Record new users' events at ``rate``/s for ``seconds``; time event sent -> params live."""
    from fsrec_serve.store import UserKeyer

    keyer = UserKeyer()
    # new users: the cold users, then every warm user's sequence again under a new id (enough
    # events for the whole run at the rate)
    cold = [s for s in splits.cold_users if len(s) >= 3] + [s for s in splits.loo_train() if len(s) >= 3]
    learner = subprocess.Popen(learner_cmd(model_dir, store_url, fit_interval), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return _stream(server, store_url, splits, cold, keyer, learner, seconds, rate, fit_interval)
    finally:  # never leave a learner behind
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait()


def _stream(server, store_url: str, splits, cold, keyer, learner, seconds: float, rate: float,
            fit_interval: float) -> list[dict]:
    """Wait for the learner to catch up, then send events at ``rate`` and measure (freshness())."""
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.store import open_store

    with open_store(store_url) as store:  # the learner catches up with the backlog first
        deadline = time.monotonic() + 600
        while store.lag("learner")[0] and time.monotonic() < deadline:
            time.sleep(0.5)
    time.sleep(3.0)  # ... and fits the users it touched
    sent: dict = {}  # user key -> [(count after this event, time sent)]
    done: list = []
    when: list = []  # seconds into the run each measured event was sent (where the tail sits)
    stop = threading.Event()
    lock = threading.Lock()

    def poll():
        with open_store(store_url) as store:
            while not stop.is_set() or any(sent.values()):
                with lock:
                    keys = [k for k, v in sent.items() if v]
                states = store.states(keys)
                now = time.time()
                with lock:
                    for k in keys:
                        st = states.get(k)
                        while st and sent[k] and st.event_count >= sent[k][0][0] and st.fit_time >= sent[k][0][1]:
                            t_sent = sent[k].pop(0)[1]
                            done.append(now - t_sent)
                            when.append(t_sent - t_start)
                if stop.is_set() and time.time() > t_end + 30:
                    break
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    counts: dict = {}
    batch_every = 0.05
    per_batch = max(1, int(round(rate * batch_every)))
    cursor = [0] * len(cold)
    i = 0
    t_start = time.time()
    t_end = t_start + seconds
    poller.start()
    n_sent = 0
    with RecommenderClient.for_server(server) as c:
        while time.time() < t_end:
            batch = []
            for _ in range(per_batch):
                u = i % len(cold)
                i += 1
                s = cold[u]
                if cursor[u] >= len(s):
                    continue
                batch.append((f"new-{u}", splits.item_map.raw(s.items[cursor[u]]), float(cursor[u]),
                              f"new-{u}-{cursor[u]}"))
                cursor[u] += 1
            if not batch:
                break
            t_send = time.time()
            c.record_many(batch)
            with lock:
                for user, *_ in batch:
                    k = keyer.key(user)
                    counts[k] = counts.get(k, 0) + 1
                    sent.setdefault(k, []).append((counts[k], t_send))
            n_sent += len(batch)
            time.sleep(max(0.0, t_start + (n_sent / rate) - time.time()))
    achieved = n_sent / (time.time() - t_start)
    stop.set()
    poller.join(timeout=60)
    missing = sum(len(v) for v in sent.values())
    lat = np.array(done) if done else np.array([float("nan")])
    base = {"dataset": "ml-100k", "protocol": "freshness", "method": "loop-sqlite", "std": 0.0, "n": 1,
            "events_per_s": round(achieved, 1), "events": n_sent, "not_fresh_within_30s": missing,
            "fit_interval_s": fit_interval, "per_user_steps": PER_USER_STEPS or "fsrec learn default (10, 25)",
            "context": CONTEXT[0] if CONTEXT else "window"}
    if done:  # p99 per 10-s window of the run: a tail spread over the run, or one stall
        w = (np.array(when) // 10).astype(int)
        base["p99_s_by_10s_window"] = [round(float(np.percentile(lat[w == b], 99)), 3) for b in sorted(set(w))]
    return [{**base, "metric": "p50_s", "mean": float(np.percentile(lat, 50))},
            {**base, "metric": "p99_s", "mean": float(np.percentile(lat, 99))}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-seconds", type=float, default=120.0, help="pretraining cap of the served model")
    ap.add_argument("--requests", type=int, default=3000, help="requests per path, serving-by-user")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the freshness run")
    ap.add_argument("--rate", type=float, default=EVENTS_RATE, help="events/s of the freshness run")
    ap.add_argument("--fit-interval", type=float, default=0.25, help="learner --fit-interval of the freshness run")
    ap.add_argument("--fault-events", type=int, default=2000, help="events replayed in the faults run")
    ap.add_argument("--fault-users", type=int, default=40, help="users of the faults run (~50 events each)")
    ap.add_argument("--fault-rate", type=float, default=50.0, help="events/s of the faults run")
    ap.add_argument("--only", choices=["serving", "freshness", "faults"], action="append", default=None)
    ap.add_argument("--per-user-steps", type=int, nargs="+", default=None,
                    help="the learners' per-user step checkpoints (default: fsrec learn's)")
    ap.add_argument("--context", choices=["window", "history"], default=None, help="the learners' --context")
    ap.add_argument("--out", default="replay-live", help="results file stem")
    args = ap.parse_args(argv)
    PER_USER_STEPS[:] = args.per_user_steps or []
    CONTEXT[:] = [args.context] if args.context else []
    from fsrec_serve.serving import serve

    from bench.live_faults import faults

    work = Path(tempfile.mkdtemp(prefix="fsrec-live-"))
    os.environ["FSREC_STATE_DIR"] = str(work / "state")  # a fresh user-key secret and store
    only = set(args.only or ("serving", "freshness", "faults"))
    splits, model_dir, repo = prepare(work, args.train_seconds)
    rows: list = []
    load0 = os.getloadavg()[0]
    if only & {"serving", "freshness"}:
        store = str(work / "store.sqlite3")
        server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, store=store, log_file=work / "triton.log")
        try:
            if "serving" in only:
                rows += serving_by_user(server, store, splits, args.requests)
            if "freshness" in only:
                rows += freshness(server, store, splits, model_dir, args.seconds, args.rate, args.fit_interval)
        finally:
            server.stop()
    if "faults" in only:
        rows += faults(work, splits, model_dir, repo, args.fault_events, learner_cmd, args.fault_users,
                       args.fault_rate)
    for r in rows:
        r["load_avg_at_start"] = round(load0, 2)
        print(r["protocol"], r["method"], r["metric"], round(r["mean"], 4))
    cmd = "python -m bench.live " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(args.out, cmd.strip(), rows))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
