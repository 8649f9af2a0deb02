"""Faults during a replay (``bench.live``): kill -9 the learner, tritonserver and redis-server in
turn while new users' events flow through Triton into a redis store; then count events lost,
events applied twice, and answers that used parameters fitted on another model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class Redis:
    """A real redis-server on a free loopback port, append-only with fsync on every write."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> "Redis":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


def _retry(fn, what: str, budget_s: float = 120.0):
    """``fn()`` until it succeeds (the client's at-least-once loop); returns (result, attempts)."""
    from fsrec_serve.errors import FsRecError

    deadline, attempts = time.monotonic() + budget_s, 0
    while True:
        attempts += 1
        try:
            return fn(), attempts
        except FsRecError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: still failing after {budget_s:.0f} s") from None
            time.sleep(0.5)


def faults(work: Path, splits, model_dir: Path, repo: Path, n_events: int, learner_cmd) -> list[dict]:
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.serving import serve
    from fsrec_serve.store import UserKeyer, open_store

    keyer = UserKeyer()
    redis = Redis(work / "redis").start()

    def start_server():
        s = serve(repo, http_port=0, grpc_port=0, metrics_port=0, store=redis.url, log_file=work / f"triton-{time.time_ns()}.log")
        return s, RecommenderClient.for_server(s, retries=0)

    def start_learner():
        return subprocess.Popen(learner_cmd(model_dir, redis.url, 0.5), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    server, client = start_server()
    learner = start_learner()
    cold = [s for s in splits.cold_users if len(s) >= 3]
    events, cursor, i = [], [0] * len(cold), 0
    while len(events) < n_events and i < 100 * n_events:
        u = i % len(cold)
        i += 1
        if cursor[u] < len(cold[u]):
            s = cold[u]
            events.append((f"new-{s.user}", splits.item_map.raw(s.items[cursor[u]]), float(cursor[u]), f"f-{s.user}-{cursor[u]}"))
            cursor[u] += 1
    expected: dict = {}
    for user, *_ in events:
        expected[keyer.key(user)] = expected.get(keyer.key(user), 0) + 1
    served_fp = json.loads((repo / "fsrec" / "1" / "fsrec_meta.json").read_text())["fingerprint"]
    kills, stale, personal, resent = [], 0, 0, 0
    batches = [events[j:j + 20] for j in range(0, len(events), 20)]
    try:
        for b, batch in enumerate(batches):
            frac = b / len(batches)
            if not kills and frac >= 0.25:
                os.killpg(learner.pid, signal.SIGKILL)
                learner.wait()
                learner = start_learner()
                kills.append("learner")
            elif len(kills) == 1 and frac >= 0.5:
                os.killpg(server.pid, signal.SIGKILL)
                client.close()
                server, client = start_server()
                kills.append("tritonserver")
            elif len(kills) == 2 and frac >= 0.75:
                redis.kill()
                kills.append("redis-server")
                redis.start()  # same port and folder: what it acknowledged is in the append-only file
            _, attempts = _retry(lambda: client.record_many(batch), "record")
            resent += attempts - 1
            if b % 5 == 0:
                for user, *_ in batch[:3]:
                    rec, _ = _retry(lambda: client.recommend_for_user(user), "recommend")
                    if rec.source == "personal":
                        personal += 1
                        with open_store(redis.url) as store:
                            st = store.states([keyer.key(user)]).get(keyer.key(user))
                        stale += int(st is None or st.fingerprint != served_fp)
        deadline = time.monotonic() + 180
        with open_store(redis.url) as store:
            while store.lag("learner")[0] and time.monotonic() < deadline:
                time.sleep(0.5)
            states = store.states(list(expected))
    finally:
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait()
        client.close()
        server.stop()
        redis.stop()
    got = {k: (states[k].event_count if k in states else 0) for k in expected}
    lost = sum(max(0, expected[k] - got[k]) for k in expected)
    doubled = sum(max(0, got[k] - expected[k]) for k in expected)
    base = {"dataset": "ml-100k", "protocol": "faults", "method": "loop-redis", "std": 0.0, "n": 1,
            "events": len(events), "kills": kills, "batches_resent": resent, "personal_answers_checked": personal}
    return [{**base, "metric": "events_lost", "mean": float(lost)},
            {**base, "metric": "events_doubled", "mean": float(doubled)},
            {**base, "metric": "stale_answers", "mean": float(stale)}]
