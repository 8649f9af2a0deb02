"""Arrivals benchmark: users first seen after the model was trained (ML-100K, real timestamps).

Protocol in ``fsrec_serve/experiments/arrivals.py``: stale model of T (80 % time quantile),
update rounds of equal event counts after T, paths ``stale`` / ``cohort`` (a few epochs of
fine-tuning on each round's new slice, chained) / ``retrain`` (fresh pretraining on everything
before each round boundary), queries = each arrival's (k+1)-th item after their first k.

    python -m bench.arrivals --stage pretrain      # stale + one retrain per round (cached)
    python -m bench.arrivals --stage evaluate      # cohort updates, metrics -> arrivals.json
    python -m bench.arrivals --rounds 3 --out arrivals-r3   # coarser rounds (arrivals-r3.json)
    python -m bench.arrivals --quick               # smoke run: tiny model, 1 epoch

CPU seconds are ``time.process_time()`` of this process around each path's training (all
threads; torch runs ``--num-threads`` threads). Evaluation is not counted in any path.
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

REPO = Path(__file__).resolve().parents[1]
METRICS = ("hr@10", "ndcg@10")


def _timeline(args):
    from fsrec_serve.data import load_dataset
    from fsrec_serve.experiments.arrivals import ArrivalsConfig, build_timeline

    acfg = ArrivalsConfig(quantile=args.quantile, n_rounds=args.rounds, ks=tuple(args.ks))
    return build_timeline(load_dataset("ml-100k", args.data_dir), acfg), acfg


def _configs(splits, args):
    from fsrec_serve.training import default_model_config, default_train_config

    mo = dict(max_seq_len=args.max_seq_len)
    to = dict(seed=args.seed, device="cpu", num_threads=args.num_threads, progress=False,
              patience=args.patience)
    if args.quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1)
        to.update(epochs=1, patience=0)
    return default_model_config(splits, "causal", **mo), default_train_config(splits, "causal", **to)


def retrain_dir(args, r: int) -> Path:
    return Path(args.cache) / (f"retrain-r{r}" + ("-quick" if args.quick else ""))


def stage_pretrain(args, tl, acfg, log) -> None:
    """Pretrain the model of every round boundary (r = 0 is the stale model) and cache it."""
    from fsrec_serve.experiments.arrivals import splits_before, train_valid_before
    from fsrec_serve.training import pretrain

    for r, b in enumerate(tl.boundaries):
        out = retrain_dir(args, r)
        if (out / "fsrec_run.json").exists() and (out / "cpu.json").exists():
            log(f"round {r}: cached {out}")
            continue
        splits = splits_before(tl, b)
        train, valid = train_valid_before(tl, b, acfg.min_train_len)
        mc, tc = _configs(splits, args)
        tc.output_dir = str(out)
        log(f"round {r}: pretraining on {sum(len(s) for s in train)} events before {b} -> {out}")
        c0, w0 = time.process_time(), time.perf_counter()
        res = pretrain(splits, mc, tc, train_sequences=train, valid_examples=valid)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        (out / "cpu.json").write_text(json.dumps({"cpu_seconds": cpu, "wall_seconds": wall,
                                                  "best_epoch": res.best_epoch,
                                                  "best_valid": res.best_valid}) + "\n")
        log(f"round {r}: best epoch {res.best_epoch} valid {res.best_valid} cpu {cpu:.0f}s")


def _load(args, r: int):
    from fsrec_serve.model import FsRecModel

    out = retrain_dir(args, r)
    cpu = json.loads((out / "cpu.json").read_text())
    return FsRecModel.from_pretrained(str(out)).eval(), cpu


def _per_query(model, queries, per_user: bool):
    """({"ndcg": [Q], "hr": [Q]}, fit CPU seconds) of ``queries`` answered by ``model``; with
    ``per_user`` each user's offset is fitted on their own first k items (the query's history,
    all before the query's time) in one vectorized fit (fsrec_serve.adaptation.peruser)."""
    from fsrec_serve.data import UserSequence
    from fsrec_serve.evaluation.metrics import hit_at_k, ndcg_at_k
    from fsrec_serve.experiments.arrivals import ranks_with_user_params

    examples = [q.example for q in queries]
    params, cpu = None, 0.0
    if per_user:
        from fsrec_serve.adaptation.peruser import fit_user_params

        c0 = time.process_time()
        res = fit_user_params(model, [UserSequence(e.user, list(e.history), [1.0] * len(e.history))
                                      for e in examples])
        cpu = time.process_time() - c0
        params = res.params_for([e.user for e in examples])
    ranks = ranks_with_user_params(model, examples, params)
    return {"ndcg": ndcg_at_k(ranks, 10), "hr": hit_at_k(ranks, 10)}, cpu


def stage_evaluate(args, tl, acfg, log) -> tuple[list[dict], dict]:
    """Cohort updates (chained, one per round), then every path on every k's queries."""
    import numpy as np

    from fsrec_serve.experiments.arrivals import (CohortUpdateConfig, arrival_queries, cohort_update,
                                                  gap_closed_ci, new_slice, paired_relative_gain,
                                                  seen_mask)

    R = len(tl.boundaries)
    stale, stale_cpu = _load(args, 0)
    retrain, retrain_cpu = [stale], []
    for r in range(1, R):
        m, cpu = _load(args, r)
        retrain.append(m)
        retrain_cpu.append(cpu["cpu_seconds"])
    ucfg = CohortUpdateConfig(epochs=args.cohort_epochs, lr=args.cohort_lr, seed=args.seed,
                              num_threads=args.num_threads)
    cohort, cohort_cpu, slices = [stale], [], []
    for r in range(1, R):
        seqs = new_slice(tl, tl.boundaries[r - 1], tl.boundaries[r])
        c0 = time.process_time()
        cohort.append(cohort_update(cohort[-1], seqs, ucfg, candidate_mask=seen_mask(tl, tl.boundaries[r])))
        cohort_cpu.append(time.process_time() - c0)
        slices.append(len(seqs))
        log(f"round {r}: cohort update on {len(seqs)} users' windows, {cohort_cpu[-1]:.1f} cpu s")
    paths = {"stale": ([stale] * R, False), "cohort": (cohort, False), "per-user": ([stale] * R, True),
             "cohort+per-user": (cohort, True), "retrain": (retrain, False)}
    base_cpu = {"stale": 0.0, "cohort": float(sum(cohort_cpu)), "per-user": 0.0,
                "cohort+per-user": float(sum(cohort_cpu)), "retrain": float(sum(retrain_cpu))}
    rows, details = [], {"T": tl.T, "boundaries": tl.boundaries, "new_slice_users": slices,
                         "cohort_cpu_per_round": cohort_cpu, "retrain_cpu_per_round": retrain_cpu,
                         "stale_pretrain_cpu": stale_cpu["cpu_seconds"], "cohort_config": vars(ucfg),
                         "by_k": {}}

    def add(k, method, metric, value, **extra):
        rows.append({"dataset": "ml-100k", "protocol": f"arrivals-k{k}", "method": method,
                     "metric": metric, **extra, "mean": float(value), "std": 0.0, "n": 1})

    for k in acfg.ks:
        qs = arrival_queries(tl, k)
        users = [q.example.user for q in qs]
        per, cpu = {}, {}
        for name, (models, per_user) in paths.items():
            nd, hr, fit_cpu = np.zeros(len(qs)), np.zeros(len(qs)), 0.0
            for r in range(R):
                idx = [j for j, q in enumerate(qs) if q.round == r]
                if idx:
                    m, c = _per_query(models[r], [qs[j] for j in idx], per_user)
                    nd[idx], hr[idx], fit_cpu = m["ndcg"], m["hr"], fit_cpu + c
            per[name], cpu[name] = nd, base_cpu[name] + fit_cpu
            add(k, name, "ndcg@10", nd.mean(), n_queries=len(qs))
            add(k, name, "hr@10", hr.mean(), n_queries=len(qs))
            add(k, name, "cpu_seconds", cpu[name], per_user_fit_cpu=fit_cpu,
                note="training CPU seconds of all update rounds (+ the per-user fits of every query)")
            if name != "stale":
                g = paired_relative_gain(nd, per["stale"], users, seed=args.seed)
                add(k, name, "relative_gain", g.pop("mean"), **g, metric_of="ndcg@10")
        for name in ("cohort", "per-user", "cohort+per-user"):
            gc = gap_closed_ci(per[name], per["stale"], per["retrain"], users, seed=args.seed)
            add(k, name, "gap_closed", gc.pop("mean"), **gc,
                cpu_share_of_retrain=cpu[name] / cpu["retrain"] if cpu["retrain"] else float("nan"))
            details["by_k"].setdefault(k, {})[f"gap_closed_{name}"] = gc
        details["by_k"][k]["queries_per_round"] = [sum(q.round == r for q in qs) for r in range(R)]
        log(f"k={k}: " + ", ".join(f"{n} {v.mean():.4f}" for n, v in per.items()) + f", cpu {cpu}")
    return rows, details


def setup(args):
    """Shared by the arrivals/items benches: data folder default, torch threads; returns log()."""
    if args.data_dir is None and not os.environ.get("FSREC_DATA_DIR"):
        shared = REPO.parent / "shared" / "data"
        args.data_dir = str(shared) if shared.exists() else None
    import torch

    torch.set_num_threads(args.num_threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    return log


def save(bench: str, args, argv, rows: list, extra: dict, log) -> None:
    """bench/results/<--out or bench[-quick]>.json with the command that reproduces it."""
    cmd = f"python -m bench.{bench} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    name = args.out or (f"{bench}-quick" if args.quick else bench)
    log(f"wrote {write_results(name, cmd, rows, extra=extra)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["pretrain", "evaluate", "all"], default="all")
    p.add_argument("--quantile", type=float, default=0.8)
    p.add_argument("--rounds", type=int, default=6, help="update rounds after T (equal event counts)")
    p.add_argument("--max-seq-len", type=int, default=50, help="history window of every model")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 1)))
    p.add_argument("--cohort-epochs", type=int, default=3)
    p.add_argument("--cohort-lr", type=float, default=5e-4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache", default=None, help="model cache (default runs/arrivals-cache-r<rounds>)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    log = setup(args)
    args.cache = args.cache or f"runs/arrivals-cache-r{args.rounds}"
    Path(args.cache).mkdir(parents=True, exist_ok=True)

    tl, acfg = _timeline(args)
    log(f"T={tl.T} boundaries={tl.boundaries}")
    if args.stage in ("pretrain", "all"):
        stage_pretrain(args, tl, acfg, log)
    if args.stage in ("evaluate", "all"):
        results, extra = stage_evaluate(args, tl, acfg, log)
        save("arrivals", args, argv, results, extra, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
