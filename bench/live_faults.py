"""Faults during a replay (``bench.live``): new users' events stream through Triton into a redis
store (a sender thread, at-least-once: a failed batch is resent with the same event ids) while a
learner process fits; meanwhile the learner, tritonserver and redis-server are each killed with
SIGKILL and restarted, and a second model version is rolled out (new fingerprint; the learner
restarts on it). A checker thread asks for recently active users by id throughout. Counted:
events lost, events applied twice, and answers that used parameters fitted on another model
than the version that answered."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
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


class _Stack:
    """tritonserver + a client, restartable; the sender and checker threads share it."""

    def __init__(self, repo: Path, redis: Redis, work: Path):
        self.repo, self.redis, self.work = repo, redis, work
        self.lock = threading.Lock()
        self.server = self.client = None
        self.start()

    def start(self) -> None:
        from fsrec_serve.client import RecommenderClient
        from fsrec_serve.serving import serve

        server = serve(self.repo, http_port=0, grpc_port=0, metrics_port=0, store=self.redis.url,
                       restricted_api_key=os.environ["FSREC_ADMIN_KEY"], log_file=self.work / f"t-{time.time_ns()}.log")
        with self.lock:
            self.server, self.client = server, RecommenderClient.for_server(server, retries=0, admin=True)

    def kill(self) -> None:
        with self.lock:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.client.close()

    def call(self, fn, what: str, budget_s: float = 180.0):
        """``fn(client)`` until it succeeds; returns (result, failed attempts)."""
        from fsrec_serve.errors import ConfigError, FsRecError

        deadline, failed = time.monotonic() + budget_s, 0
        while True:
            with self.lock:
                client = self.client
            try:
                return fn(client), failed
            except (FsRecError, ConfigError):
                failed += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: still failing after {budget_s:.0f} s") from None
                time.sleep(0.3)


def _second_version(model_dir: Path, work: Path) -> Path:
    """A re-fine-tuned-like second model (weights nudged: another fingerprint), saved + exported."""
    import torch

    from exporters import export_onnx
    from fsrec_serve.model import FsRecModel

    model = FsRecModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    model.save_pretrained(work / "served-v2")
    export_onnx(model, work / "export-v2")
    return work / "served-v2"


def _fingerprint_of(url: str, key: str) -> str | None:
    from fsrec_serve.errors import StoreError
    from fsrec_serve.store import open_store

    try:
        with open_store(url) as store:
            st = store.states([key]).get(key)
        return st.fingerprint if st else None
    except StoreError:  # redis is being restarted
        return None


def _events(splits, n: int, n_users: int) -> list:
    """``n`` events of ``n_users`` users (round robin over long sequences: each user gets enough
    events for the per-user fit, so answers with parameters are exercised too)."""
    cold = ([s for s in splits.cold_users if len(s) >= 30] + [s for s in splits.loo_train() if len(s) >= 30])[:n_users]
    events, cursor, i = [], [0] * len(cold), 0
    while len(events) < n and i < 100 * n:
        u, i = i % len(cold), i + 1
        if cursor[u] < len(cold[u]):
            events.append((f"f-{u}", splits.item_map.raw(cold[u].items[cursor[u]]), float(cursor[u]), f"f-{u}-{cursor[u]}"))
            cursor[u] += 1
    return events


def faults(work: Path, splits, model_dir: Path, repo: Path, n_events: int, learner_cmd,
           n_users: int = 40, rate: float = 50.0) -> list[dict]:
    from fsrec_serve.operations.control import ModelControl
    from fsrec_serve.operations.rollout import rollout
    from fsrec_serve.store import UserKeyer, open_store

    os.environ["FSREC_ADMIN_KEY"] = "bench-live-faults"
    keyer, redis = UserKeyer(), Redis(work / "redis").start()
    stack = _Stack(repo, redis, work)
    start_learner = lambda d: subprocess.Popen(learner_cmd(d, redis.url, 0.25), start_new_session=True,  # noqa: E731
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    learner = start_learner(model_dir)
    events = _events(splits, n_events, n_users)
    batches = [events[j:j + 20] for j in range(0, len(events), 20)]
    fps = {"1": json.loads((repo / "fsrec" / "1" / "fsrec_meta.json").read_text())["fingerprint"]}
    state = {"sent": 0, "resent": 0, "checked": 0, "stale": 0, "done": False}

    def sender():  # paced at ``rate`` events/s, so the learner fits while the faults happen
        t0 = time.monotonic()
        for b, batch in enumerate(batches):
            _, failed = stack.call(lambda c: c.record_many(batch), "record")
            state["resent"] += failed
            state["sent"] += 1
            time.sleep(max(0.0, t0 + (b + 1) * len(batch) / rate - time.monotonic()))
        state["done"] = True

    rng = random.Random(0)

    def checker():  # a user with events so far, at random, by user id
        while not state["done"]:
            user = rng.choice(batches[max(0, state["sent"] - 1)])[0]
            before = _fingerprint_of(redis.url, keyer.key(user))
            rec, _ = stack.call(lambda c: c.recommend_for_user(user), "recommend")
            if rec.source == "personal":  # stale: the answering version's fingerprint is neither the
                state["checked"] += 1     # user's before nor after the call (a refit may fall between)
                after = _fingerprint_of(redis.url, keyer.key(user))
                state["stale"] += int(fps.get(rec.model_version) not in (before, after))
            time.sleep(0.05)

    threads = [threading.Thread(target=sender, daemon=True), threading.Thread(target=checker, daemon=True)]
    for t in threads:
        t.start()
    kills = []
    try:
        for frac, what in ((0.15, "learner"), (0.3, "tritonserver"), (0.45, "redis-server"), (0.6, "rollout")):
            while state["sent"] < frac * len(batches) and not state["done"]:
                time.sleep(0.05)
            if what == "learner":
                os.killpg(learner.pid, signal.SIGKILL)
                learner.wait()
                learner = start_learner(model_dir)
            elif what == "tritonserver":
                stack.kill()
                stack.start()
            elif what == "redis-server":
                redis.kill()
                time.sleep(1.0)
                redis.start()
            else:  # version 2 through the guarded rollout; the learner restarts on the new model
                model2 = _second_version(model_dir, work)
                fps["2"] = json.loads((work / "export-v2" / "fsrec_meta.json").read_text())["fingerprint"]
                with stack.lock:
                    control, live = ModelControl(client=stack.client), stack.server.runtime_repository
                rollout(work / "export-v2", live, control)
                os.killpg(learner.pid, signal.SIGKILL)
                learner.wait()
                learner = start_learner(model2)
            kills.append(what)
        for t in threads:
            t.join(600)
        deadline = time.monotonic() + 300
        with open_store(redis.url) as store:
            while store.lag("learner")[0] and time.monotonic() < deadline:
                time.sleep(0.5)
            expected: dict = {}
            for user, *_ in events:
                expected[keyer.key(user)] = expected.get(keyer.key(user), 0) + 1
            states = store.states(list(expected))
    finally:
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait()
        stack.server.stop()
        redis.stop()
        os.environ.pop("FSREC_ADMIN_KEY", None)
    got = {k: (states[k].event_count if k in states else 0) for k in expected}
    base = {"dataset": "ml-100k", "protocol": "faults", "method": "loop-redis", "std": 0.0, "n": 1,
            "events": len(events), "users": n_users, "events_per_s": rate, "faults": kills, "requests_failed_and_resent": state["resent"],
            "personal_answers_checked": state["checked"]}
    return [{**base, "metric": "events_lost", "mean": float(sum(max(0, expected[k] - got[k]) for k in expected))},
            {**base, "metric": "events_doubled", "mean": float(sum(max(0, got[k] - expected[k]) for k in expected))},
            {**base, "metric": "stale_answers", "mean": float(state["stale"])}]
