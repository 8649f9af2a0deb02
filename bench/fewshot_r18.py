"""The k-shot benchmark of issue 18.3 (results: bench/results/fewshot-r18.json).

Protocol (``coldstart-k{1,3,5,10}``; ``coldstart-time-k{k}`` for the time folds)
    ML-100K, ``--folds`` user folds: every user with >= 11 interactions is a cold user once. Per
    fold two bases with the full causal recipe (``kshot_folds.FULL_RECIPE``), one with prefix
    windows; inner users (warm users whose first 11 items no base trained on) are the inner
    validation of every choice. Time folds: the cold users arrive after the fold's cut time, the
    bases pretrain on the events before it. Methods and selection:
    ``fsrec_serve/experiments/kshot.py``. Fold bases and per-(fold, k) records are cached under
    ``--cache`` (a rerun continues where it stopped).

    python -m bench.fewshot_r18 --pretrain-only --protocols user --variants base     # one process
    python -m bench.fewshot_r18 --pretrain-only --protocols user --variants prefix   # per variant
    python -m bench.fewshot_r18 --protocols user --only-folds 0 1 --wait-bases        # records
    python -m bench.fewshot_r18 --aggregate-only                                      # the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # `python bench/fewshot_r18.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")
KS = [1, 3, 5, 10]
PROTOCOL = {"user": "coldstart-k{k}", "time": "coldstart-time-k{k}"}


def folds_of(protocol: str, data, args) -> list:
    from fsrec_serve.experiments.kshot_folds import kshot_time_folds, kshot_user_folds

    return kshot_user_folds(data, args.folds) if protocol == "user" else kshot_time_folds(data)


def bases_of(fold, args, log, wait: bool = False) -> dict:
    """{"base": model, "prefix": model} of one fold (``wait``: poll until another process has
    written them instead of training them here)."""
    from fsrec_serve.experiments.kshot_folds import fold_base

    out = {}
    for v in args.variants:
        path = Path(args.cache) / f"{fold.name}-{v}-s{args.seeds[0]}" / "fsrec_run.json"
        while wait and not path.exists():
            time.sleep(30)
        model, info = fold_base(fold, v, args.cache, seed=args.seeds[0], num_threads=args.num_threads, log=log)
        log(f"{fold.name} {v}: best epoch {info['best_epoch']} valid ndcg@10 "
            f"{info['best_valid'].get('ndcg@10'):.4f} ({info['seconds']:.0f}s)")
        out[v] = model
    return out


def run_records(args, log) -> None:
    """The per-(fold, k) records of every requested fold (cached as JSON)."""
    from fsrec_serve.data import load_dataset
    from fsrec_serve.experiments.kshot import KshotSettings, kshot_run

    data = load_dataset("ml-100k", args.data_dir)
    settings = KshotSettings(num_threads=args.num_threads, **json.loads(args.settings))
    for proto in args.protocols:
        for f, fold in enumerate(folds_of(proto, data, args)):
            if args.only_folds is not None and f not in args.only_folds:
                continue
            if args.pretrain_only:
                bases_of(fold, args, log)
                continue
            bases = None
            for k in args.ks:
                path = Path(args.cache) / f"kshot-{fold.name}-k{k}.json"
                if path.exists():
                    continue
                bases = bases or bases_of(fold, args, log, wait=args.wait_bases)
                rec = kshot_run(fold, k, bases, settings, log=log)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(rec) + "\n")
                tmp.replace(path)


def method_rows(recs: list, proto: str, n_boot: int) -> tuple[list, dict]:
    """ndcg@10 / hr@10 / inner_ndcg@10 rows of every method (two-level CIs) + the pooled means."""
    import numpy as np

    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.kshot import ADAPTERS, BASELINES, two_level_mean

    rows, means = [], {}
    for m in BASELINES + ADAPTERS:
        nd = [ndcg_at_k(r["methods"][m]["ranks"], 10) for r in recs]
        hr = [(np.asarray(r["methods"][m]["ranks"]) < 10).astype(float) for r in recs]
        inner = [ndcg_at_k(r["methods"][m]["inner_ranks"], 10) for r in recs]
        base = dict(dataset="ml-100k", protocol=proto, method=m)
        for metric, vals in (("ndcg@10", nd), ("hr@10", hr), ("inner_ndcg@10", inner)):
            rows.append(dict(base, metric=metric, **two_level_mean(vals, n_boot, seed=len(rows))))
        means[m] = (rows[-3]["mean"], rows[-1]["mean"], nd)
        if m in ADAPTERS:
            rows.append(summarize([r["methods"][m]["seconds"] for r in recs], **base, metric="seconds"))
    return rows, means


def gain_rows(means: dict, proto: str, n_boot: int) -> list:
    """relative_gain of every adapter over the strongest baseline on test (field ``baseline``;
    ``baseline_inner`` = the one the inner users pick), and ``gain_over_<baseline>`` rows of the
    registered method over each baseline."""
    from fsrec_serve.experiments.kshot import (
        ADAPTERS,
        BASELINES,
        PRIMARY,
        two_level_gain,
    )

    strongest = max(BASELINES, key=lambda b: means[b][0])
    inner_pick = max(BASELINES, key=lambda b: means[b][1])
    rows = []
    for i, m in enumerate(ADAPTERS):
        g = two_level_gain(means[strongest][2], means[m][2], n_boot, seed=100 + i)
        rows.append(dict(dataset="ml-100k", protocol=proto, method=m, metric="relative_gain", **g,
                         baseline=strongest, baseline_inner=inner_pick, std=0.0, n=1))
    for j, b in enumerate(BASELINES):
        g = two_level_gain(means[b][2], means[PRIMARY][2], n_boot, seed=200 + j)
        rows.append(dict(dataset="ml-100k", protocol=proto, method=PRIMARY, metric=f"gain_over_{b}", **g,
                         baseline=b, std=0.0, n=1))
    return rows


def aggregate(cache: str, n_boot: int) -> tuple[list, dict]:
    """Every cached record -> rows + details (choices per fold, fold bases)."""
    recs: dict = {}
    for p in sorted(Path(cache).glob("kshot-*-k*.json")):
        r = json.loads(p.read_text())
        recs.setdefault((r["fold"].split("-")[0], r["k"]), []).append(r)
    rows, details = [], {}
    for (family, k), rr in sorted(recs.items()):
        proto = PROTOCOL[family].format(k=k)
        mrows, means = method_rows(rr, proto, n_boot)
        rows += mrows + gain_rows(means, proto, n_boot)
        details[proto] = {r["fold"]: {"base": r["base"], "n_cold": len(r["users"]), "n_inner": len(r["inner_users"]),
                                      **{m: v["info"] for m, v in r["methods"].items() if v["info"]}} for r in rr}
    details["notes_fold_bases"] = base_note(cache, details)
    return rows, details


def base_note(cache: str, details: dict) -> str:
    """The fold bases' valid NDCG@10 (warm users' validation item) as a note; per run in details."""
    import numpy as np

    vals: dict = {}
    details["fold_bases"] = {}
    for p in sorted(Path(cache).glob("*-s0/fsrec_run.json")):
        info = json.loads(p.read_text())
        family, _, variant, _ = p.parent.name.split("-")
        details["fold_bases"][p.parent.name] = {k: info.get(k) for k in ("best_epoch", "epochs_run", "best_valid", "seconds")}
        vals.setdefault(f"{family} folds {variant}", []).append(info["best_valid"]["ndcg@10"])
    parts = [f"{name} {np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f} (n={len(v)})"
             for name, v in vals.items()]
    return ("Fold bases, valid NDCG@10 of the warm users (full model on every user: 0.111-0.114): "
            + "; ".join(parts) + ".")


NOTES = [
    "ndcg@10/hr@10: mean over every cold user of the folds (first k items = support, the (k+1)-th = query, "
    "full ranking); [ci] = 95 % two-level bootstrap (fold bases, then users within them); std = over the "
    "folds' means (n = folds); std_users = over users.",
    "Every choice (base vs prefix base, head-only lr, per-user lr/steps, inner-best, baseline_inner) is "
    "made on inner users: warm users whose first 11 items no fold base trained on, their first k items as "
    "support and the (k+1)-th as query (inner_ndcg@10). Cold users' queries are only scored.",
    "relative_gain = method / the strongest non-adaptive baseline ON TEST at that k - 1 (field baseline; "
    "baseline_inner = the baseline the inner users pick); gain_over_<baseline> = the registered "
    "method (cohort+per-user) over each baseline; boot_undefined = share of resamples with a zero baseline mean.",
    "Fold bases: one pretraining seed per fold (CPU budget), so the folds are the first bootstrap level. "
    "auto and lora+warm were not run (CPU budget): inner-best is the selection among the base and the "
    "three adapters on inner users.",
]

COMMANDS = [  # the run behind bench/results/fewshot-r18.json (2 shared cores, one thread a process)
    "nice -n 5 python -m bench.fewshot_r18 --pretrain-only --protocols user --variants base    (2,873 s)",
    "nice -n 5 python -m bench.fewshot_r18 --pretrain-only --protocols user --variants prefix  (3,366 s)",
    "nice -n 5 python -m bench.fewshot_r18 --pretrain-only --protocols time --only-folds F --variants V  "
    "(4 runs, 295-456 s each)",
    "nice -n 5 python -m bench.fewshot_r18 --protocols user --only-folds 0 2 4 --wait-bases  (3,252 s, "
    "waiting for bases included); the same with --only-folds 1 3 (2,145 s)",
    "python -m bench.fewshot_r18 --protocols time --only-folds 0 (149 s); --only-folds 1 (184 s)",
    "python -m bench.fewshot_r18 --aggregate-only  (54 s)",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=5, help="user folds (one base pair each)")
    p.add_argument("--protocols", nargs="+", default=["user", "time"], help="user and/or time folds")
    p.add_argument("--variants", nargs="+", default=["base", "prefix"], help="fold bases to pretrain")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="pretraining seeds (the first is used)")
    p.add_argument("--ks", nargs="+", type=int, default=KS)
    p.add_argument("--only-folds", nargs="+", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 1)))
    p.add_argument("--cache", default="/tmp/fewshot-r18-cache", help="fold bases + per-(fold, k) records")
    p.add_argument("--settings", default="{}", help="JSON of KshotSettings fields")
    p.add_argument("--pretrain-only", action="store_true")
    p.add_argument("--wait-bases", action="store_true", help="wait for bases another process trains")
    p.add_argument("--aggregate-only", action="store_true", help="only summarise cached records")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--out", default="fewshot-r18")
    args = p.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    import torch

    torch.set_num_threads(args.num_threads)
    if not args.aggregate_only:
        run_records(args, log)
    if args.pretrain_only or args.only_folds is not None:
        return 0
    rows, details = aggregate(args.cache, args.n_boot)
    command = "python -m bench.fewshot_r18 " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    notes = [NOTES[0], NOTES[2], details.pop("notes_fold_bases"), NOTES[1], NOTES[3]]
    out = write_results(args.out, command, rows, extra={"notes": notes, "details": details, "commands": COMMANDS,
                                                        "wall_seconds": time.time() - t0})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
