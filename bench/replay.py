"""Prequential replay of the live loop on ML-100K (protocol: ``fsrec_serve/experiments/replay.py``).

    python -m bench.replay --stage pretrain                      # the model of T (cached)
    python -m bench.replay --stage run --methods loop retrain    # per-method ranks (cached)
    python -m bench.replay --stage combine                       # rows -> bench/results/replay.json
    python -m bench.replay                                       # all three, every method
    python -m bench.replay --max-events 500 --max-train-seconds 20 --cadence-days 0.1  # smoke
                                                                 # (-> replay-quick.json)

Methods can run in separate processes (``--stage run --methods ...``, same ``--cache``); the
combine stage reads what they left. ``cpu_seconds`` = ``time.process_time()`` of the learning
steps only (param fits, refines, retrains), never the scoring; the model of T is shared by every
method and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

MAIN = ("stale", "recent-popularity", "history", "history+params", "loop", "retrain")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _setup(args):
    from fsrec_serve.data import load_dataset
    from fsrec_serve.experiments.arrivals import ArrivalsConfig, build_timeline
    from fsrec_serve.experiments.replay import ReplayConfig

    import torch

    torch.set_num_threads(args.num_threads)
    data_dir = args.data_dir or os.environ.get("FSREC_DATA_DIR")
    tl = build_timeline(load_dataset("ml-100k", data_dir), ArrivalsConfig(quantile=args.quantile, n_rounds=1))
    cfg = ReplayConfig(quantile=args.quantile, tick_s=args.tick_s, cadence_s=int(args.cadence_days * 86400),
                       window=args.window, max_events=args.max_events, seed=args.seed,
                       retrain_seconds=args.retrain_seconds)
    cfg.refine.seed = args.seed
    cfg.refine.max_seconds = args.refine_seconds
    return tl, cfg


def stage_pretrain(args, tl, cfg) -> None:
    from fsrec_serve.experiments.replay import pretrain_before

    out = Path(args.cache) / "stale"
    if (out / "info.json").exists():
        _log(f"model of T cached in {out}")
        return
    c0 = time.process_time()
    model, info = pretrain_before(tl, tl.T, args.max_train_seconds, args.seed)
    info["cpu_seconds"] = time.process_time() - c0
    model.save_pretrained(str(out))
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    _log(f"model of T: {info}")


def stage_run(args, tl, cfg) -> None:
    import numpy as np

    from fsrec_serve.experiments.replay import make_recommender, run_replay, split_at
    from fsrec_serve.model import FsRecModel

    pre, events = split_at(tl, cfg.max_events)
    for method in args.methods:
        model = FsRecModel.from_pretrained(str(Path(args.cache) / "stale")).eval()
        rec = make_recommender(method, model, pre, tl, cfg)
        _log(f"{method}: replaying {len(events)} events")
        w0 = time.perf_counter()
        ranks = run_replay(rec, events, cfg.top_k, log=_log)
        np.save(Path(args.cache) / f"ranks-{method}.npy", ranks)
        body = {"method": method, "learn_cpu": rec.learn_cpu, "wall_seconds": time.perf_counter() - w0,
                "info": rec.info}
        (Path(args.cache) / f"run-{method}.json").write_text(json.dumps(body, indent=1, default=str) + "\n")
        _log(f"{method}: done in {body['wall_seconds']:.0f}s, learning cpu {rec.learn_cpu:.1f}s")


def _rows(args, tl, cfg) -> tuple[list, dict]:
    import numpy as np

    from fsrec_serve.evaluation.metrics import hit_at_k, ndcg_at_k
    from fsrec_serve.experiments.arrivals import paired_relative_gain
    from fsrec_serve.experiments.replay import split_at

    pre, events = split_at(tl, cfg.max_events)
    users = np.array([e.user for e in events], dtype=object)
    new = np.array([e.user not in pre for e in events])
    cache = Path(args.cache)
    runs = {m: json.loads((cache / f"run-{m}.json").read_text()) for m in MAIN if (cache / f"run-{m}.json").exists()}
    nd = {m: ndcg_at_k(np.load(cache / f"ranks-{m}.npy"), cfg.top_k) for m in runs}
    hr = {m: hit_at_k(np.load(cache / f"ranks-{m}.npy"), cfg.top_k) for m in runs}
    rows = []

    def add(method, metric, value, **extra):
        rows.append({"dataset": "ml-100k", "protocol": "replay", "method": method, "metric": metric,
                     **extra, "mean": float(value), "std": 0.0, "n": 1})

    for m in runs:
        for split, sel in (("all", np.ones(len(events), bool)), ("new", new), ("returning", ~new)):
            for metric, v in (("ndcg@10", nd[m]), ("hr@10", hr[m])):
                add(m, metric, v[sel].mean() if sel.any() else float("nan"), users=split,
                    n_events=int(sel.sum()), n_users=int(len(set(users[sel]))))
        add(m, "cpu_seconds", runs[m]["learn_cpu"], note="learning CPU-s (fits, refines, retrains)")
    for m in ("loop", "history+params"):
        if m in nd and "history" in nd:
            g = paired_relative_gain(nd[m], nd["history"], users, seed=args.seed)
            add(m, "relative_gain", g.pop("mean"), users="all", baseline="history", n_events=len(events),
                metric_of="ndcg@10", **g)
    if "loop" in nd and "retrain" in nd:
        g = paired_relative_gain(nd["loop"], nd["retrain"], users, seed=args.seed)
        add("loop", "retrain_ratio", 1.0 + g["mean"], users="all", baseline="retrain",
            ci_low=1.0 + g["ci_low"], ci_high=1.0 + g["ci_high"], n_users=g["n_users"],
            n_events=len(events), boot_undefined=g["boot_undefined"], metric_of="ndcg@10")
        rc = runs["retrain"]["learn_cpu"]
        add("loop", "compute_ratio", runs["loop"]["learn_cpu"] / rc if rc else float("nan"), baseline="retrain",
            loop_cpu=runs["loop"]["learn_cpu"], retrain_cpu=rc)
    stale_info = json.loads((cache / "stale" / "info.json").read_text())
    extra = {"protocol_details": {"T": tl.T, "quantile": cfg.quantile, "tick_s": cfg.tick_s,
                                  "cadence_s": cfg.cadence_s, "window": cfg.window,
                                  "retrain_seconds": cfg.retrain_seconds,
                                  "refine": {k: v for k, v in vars(cfg.refine).items()},
                                  "n_events": len(events), "n_users": int(len(set(users))),
                                  "new_user_events": int(new.sum()), "model_of_T": stale_info},
             "method_runs": {m: {"learn_cpu": r["learn_cpu"], "wall_seconds": r["wall_seconds"], "info": r["info"]}
                             for m, r in runs.items()}}
    extra["notes"] = _notes(runs, cfg)
    return rows, extra


def _notes(runs: dict, cfg) -> list[str]:
    """What the numbers rest on, computed from the runs' logs."""
    out = ["n = 1 run; n_events / n_users = the events and users a row averages over; cpu_seconds = "
           "learning CPU-s only (fits, refines, retrains), the model of T is shared and not counted"]
    refines = runs.get("loop", {}).get("info", {}).get("refines", [])
    if refines:
        acc = sum(bool(r["accepted"]) for r in refines)
        out.append(f"loop: {acc}/{len(refines)} refines accepted (reasons in method_runs.loop.info.refines)"
                   + ("; with none accepted loop serves exactly what history+params serves" if not acc else ""))
    retrains = runs.get("retrain", {}).get("info", {}).get("retrains", [])
    if retrains:
        out.append(f"retrain: {len(retrains)} retrains, each capped at {cfg.retrain_seconds:g} s wall-clock; "
                   "epochs run " + ", ".join(str(r.get("epochs_run")) for r in retrains)
                   + f" ({sum(bool(r.get('stopped_early')) for r in retrains)} stopped early)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["pretrain", "run", "combine", "all"], default="all")
    p.add_argument("--methods", nargs="+", default=list(MAIN), choices=list(MAIN))
    p.add_argument("--quantile", type=float, default=0.8)
    p.add_argument("--tick-s", type=int, default=60, help="per-user params refit tick (event-time s)")
    p.add_argument("--cadence-days", type=float, default=7.0, help="loop refine / retrain cadence")
    p.add_argument("--window", type=int, default=20, help="newest items the params are fitted on")
    p.add_argument("--max-events", type=int, default=None, help="smoke runs: first n events after T")
    p.add_argument("--max-train-seconds", type=float, default=240.0, help="cap of the model of T")
    p.add_argument("--retrain-seconds", type=float, default=240.0, help="cap of each retrain")
    p.add_argument("--refine-seconds", type=float, default=None, help="cap of each refine's fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache", default=None, help="default runs/replay-cache[-quick]")
    p.add_argument("--out", default=None, help="results stem (default replay, or replay-quick)")
    p.add_argument("--command", default=None, help="combine: the command line(s) of the whole run to record")
    args = p.parse_args(argv)
    quick = args.max_events is not None
    args.cache = args.cache or ("runs/replay-cache-quick" if quick else "runs/replay-cache")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    tl, cfg = _setup(args)
    _log(f"T={tl.T}, cache {args.cache}")
    if args.stage in ("pretrain", "all"):
        stage_pretrain(args, tl, cfg)
    if args.stage in ("run", "all"):
        stage_run(args, tl, cfg)
    if args.stage in ("combine", "all"):
        rows, extra = _rows(args, tl, cfg)
        cmd = args.command or "python -m bench.replay " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        name = args.out or ("replay-quick" if quick else "replay")
        _log(f"wrote {write_results(name, cmd, rows, machine='2 cores x86_64, no GPU', extra=extra)}")
        for r in rows:
            if r.get("users", "all") == "all":
                _log(f"  {r['method']:18s} {r['metric']:14s} {r['mean']:.4f}"
                     + (f" [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if "ci_low" in r else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
