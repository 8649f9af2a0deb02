"""The prequential replay through the real stack: tritonserver (fsrec_user, fsrec_events, the
ranker), the SQLite store and the learner, on an accelerated clock.

The model of T is the one ``bench.replay --stage pretrain`` cached (so the stack and the
in-process replay score the same model). Every event after T, in time order: ask
``fsrec_user`` for the user's top-100 by user id (the events of the current tick, not applied
yet, go as ``recent_items``), keep the top-10 among the catalogue seen so far without the user's
earlier items (the in-process protocol), then record the event through ``fsrec_events``. At
every tick boundary (event time, ``tick_s``) the learner applies the pending events and refits
the touched users (``history+params``, ``loop``); ``loop`` also re-fine-tunes every cadence and
rolls the new version out through the guarded rollout to the running server.

``python -m bench.replay_stack --methods history history+params loop`` ->
``bench/results/replay-stack.json`` (protocol ``replay``, methods suffixed ``-stack``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_results


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StackRecommender:
    """``Recommender`` of ``experiments.replay`` over the live stack (module docstring)."""

    def __init__(self, client, learner, tl, pre: dict, tick_s: int, fit: bool, refine_every_s: int | None):
        self.c, self.learner, self.tl, self.tick_s = client, learner, tl, tick_s
        self.fit, self.refine_every_s = fit, refine_every_s
        self.items = {u: [e.item for e in ev] for u, ev in pre.items()}
        self.unapplied: dict = {}  # user -> raw items recorded since the last tick boundary
        self.seen = np.zeros(len(tl.item_map) + 1, dtype=bool)
        for ev in pre.values():
            self.seen[[e.item for e in ev]] = True
        self.next_tick, self.next_refine, self.n = None, None, 0
        self.sources: dict = {}

    def _drain(self) -> None:
        while self.learner.apply_pending():
            pass
        if self.fit:
            self.learner.fit_touched()
        else:
            self.learner.touched = set()
        self.unapplied = {}

    def advance(self, now: int) -> None:
        if self.next_tick is None:
            self.next_tick = (now // self.tick_s + 1) * self.tick_s
            self.next_refine = self.tl.T + self.refine_every_s if self.refine_every_s else None
        while self.next_refine is not None and now >= self.next_refine:
            self._drain()
            self.learner.refine()
            self.next_refine += self.refine_every_s
        if now >= self.next_tick:
            self._drain()
            self.next_tick = (now // self.tick_s + 1) * self.tick_s

    def recommend(self, user: str, now: int) -> list[int]:
        self.advance(now)
        rec = self.c.recommend_for_user(user, k=100, recent_items=self.unapplied.get(user, []))
        self.sources[rec.source] = self.sources.get(rec.source, 0) + 1
        mine = set(self.items.get(user, []))
        out = []
        for raw in rec.items:
            i = self.tl.item_map.index(raw)
            if self.seen[i] and i not in mine:
                out.append(i)
            if len(out) == 10:
                break
        return out

    def record(self, event) -> None:
        raw = self.tl.item_map.raw(event.item)
        self.n += 1
        assert self.c.record(event.user, raw, float(event.time), f"r-{self.n}")
        self.unapplied.setdefault(event.user, []).append(raw)
        self.items.setdefault(event.user, []).append(event.item)
        self.seen[event.item] = True


def _prepare(cache: Path, tl, pre: dict, work: Path):
    """Export the model of T, build the repository, load the pre-T log into a fresh store."""
    from exporters import build_model_repository, export_onnx
    from exporters.user_repository import build_user_models, popularity_of
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.store import Event, UserKeyer, open_store

    model = FsRecModel.from_pretrained(str(cache / "stale")).eval()
    model.item_map = tl.item_map
    exp = export_onnx(model, work / "export")
    repo = work / "repo"
    build_model_repository(repo, exp.output_dir, target="cpu", version=1)
    build_user_models(repo, popularity_of([[e.item for e in ev] for ev in pre.values()], 100))
    store_url = str(work / "store.sqlite3")
    keyer = UserKeyer()
    with open_store(store_url) as store:
        store.append([Event(f"pre-{u}-{j}", keyer.key(u), e.item, float(e.time), tl.item_map.raw(e.item))
                      for u, ev in pre.items() for j, e in enumerate(ev)])
    return repo, store_url


def run_method(method: str, args, tl, pre: dict, events: list, work: Path) -> dict:
    from fsrec_serve.adaptation.peruser import PerUserConfig
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.experiments.replay import run_replay
    from fsrec_serve.learner import Learner, LearnerConfig
    from fsrec_serve.serving import serve

    mwork = work / method.replace("+", "_")
    mwork.mkdir()
    repo, store_url = _prepare(Path(args.cache), tl, pre, mwork)
    os.environ["FSREC_ADMIN_KEY"] = key = "replay-stack-admin"
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, store=store_url, restricted_api_key=key,
                   log_file=mwork / "triton.log")
    try:
        cfg = LearnerConfig(model_dir=Path(args.cache) / "stale", store=store_url, window=args.window,
                            fit_interval_s=0.0, per_user=PerUserConfig(), min_refine_users=1,
                            server_url=server.url_grpc, repository=server.runtime_repository,
                            work_dir=mwork / "learner")
        learner = Learner(cfg)
        while learner.apply_pending():  # the pre-T log: histories only, no parameters (as at T)
            pass
        learner.touched, learner.active = set(), set()
        learner.stats.events = 0
        with RecommenderClient.for_server(server) as client:
            rec = StackRecommender(client, learner, tl, pre, args.tick_s, fit=method != "history",
                                   refine_every_s=int(args.cadence_days * 86400) if method == "loop" else None)
            c0, w0 = learner.stats.fit_cpu_seconds + learner.stats.refine_cpu_seconds, time.perf_counter()
            ranks = run_replay(rec, events, 10, log=_log)
            learn_cpu = learner.stats.fit_cpu_seconds + learner.stats.refine_cpu_seconds - c0
        body = {"method": f"{method}-stack", "learn_cpu": learn_cpu, "wall_seconds": time.perf_counter() - w0,
                "sources": rec.sources, "refines": learner.stats.refines, "fits": learner.stats.fits}
        np.save(mwork / "ranks.npy", ranks)
        learner.close()
        return {"ranks": ranks, **body}
    finally:
        server.stop()
        os.environ.pop("FSREC_ADMIN_KEY", None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["history", "history+params", "loop"])
    ap.add_argument("--cache", default="runs/replay-cache", help="bench.replay's cache (the model of T)")
    ap.add_argument("--tick-s", type=int, default=60, help="event-time seconds between learner passes")
    ap.add_argument("--cadence-days", type=float, default=7.0, help="loop: re-fine-tune cadence (event time)")
    ap.add_argument("--window", type=int, default=20, help="newest items per user for the parameters")
    ap.add_argument("--max-events", type=int, default=None, help="replay only the first n events (smoke)")
    ap.add_argument("--out", default="replay-stack")
    args = ap.parse_args(argv)
    import torch

    from fsrec_serve.data import load_dataset
    from fsrec_serve.evaluation.metrics import hit_at_k, ndcg_at_k
    from fsrec_serve.experiments.arrivals import ArrivalsConfig, build_timeline
    from fsrec_serve.experiments.replay import split_at

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fsrec-replay-stack-"))
    os.environ["FSREC_STATE_DIR"] = str(work / "state")
    tl = build_timeline(load_dataset("ml-100k", os.environ.get("FSREC_DATA_DIR")), ArrivalsConfig(quantile=0.8, n_rounds=1))
    pre, events = split_at(tl, args.max_events)
    rows, runs = [], {}
    for method in args.methods:
        _log(f"{method} through the stack: {len(events)} events")
        out = run_method(method, args, tl, pre, events, work)
        runs[method] = {k: v for k, v in out.items() if k != "ranks"}
        _log(f"{method}: {json.dumps(runs[method], default=str)[:400]}")
        for metric, fn in (("ndcg@10", ndcg_at_k), ("hr@10", hit_at_k)):
            rows.append({"dataset": "ml-100k", "protocol": "replay", "method": f"{method}-stack", "metric": metric,
                         "mean": float(fn(out["ranks"], 10).mean()), "std": 0.0, "n": 1, "n_events": len(events),
                         "users": "all",
                         "stack": "tritonserver + sqlite store + learner"})
        rows.append({"dataset": "ml-100k", "protocol": "replay", "method": f"{method}-stack", "metric": "cpu_seconds",
                     "mean": out["learn_cpu"], "std": 0.0, "n": 1, "what": "learner CPU (fits + refines)"})
    rows += gain_rows({m: np.load(work / m.replace("+", "_") / "ranks.npy") for m in args.methods}, events)
    cmd = "python -m bench.replay_stack " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(args.out, cmd.strip(), rows, extra={"runs": runs, "max_events": args.max_events,
                                                            "work_dir": str(work)}))
    return 0


def gain_rows(ranks: dict, events: list) -> list[dict]:
    """``relative_gain`` rows (paired bootstrap over users) of history+params and loop vs history,
    through the stack, and the share of undefined resamples."""
    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.arrivals import paired_relative_gain

    users = np.array([e.user for e in events], dtype=object)
    out = []
    for m in ("history+params", "loop"):
        if m in ranks and "history" in ranks:
            g = paired_relative_gain(ndcg_at_k(ranks[m], 10), ndcg_at_k(ranks["history"], 10), users)
            out.append({"dataset": "ml-100k", "protocol": "replay", "method": f"{m}-stack", "metric": "relative_gain",
                        "users": "all", "baseline": "history-stack", "n_events": len(events), "metric_of": "ndcg@10",
                        **g, "std": 0.0, "n": 1})
    return out


if __name__ == "__main__":
    sys.exit(main())
