"""Few-shot k-shot benchmark with power: every user of ML-100K is a cold user once.

Protocol (``coldstart-k{1,3,5,10}``)
    ML-100K: the users are cut into ``--folds`` user folds; for each fold one model is pretrained
    WITHOUT the fold's users (SASRec-style causal config of ``recommended_config``, early stopping
    on the warm users' validation item) and the fold's users are the cold users. Beauty: one
    pretraining without a random sample of ``--beauty-cold`` cold users (capped budget, see
    ``--beauty-*``). Support = a cold user's first k interactions, query = the (k+1)-th, full
    ranking, support items excluded. The fold checkpoints are cached under ``--cache`` and
    reused for every k and method.

Methods: ``zero-shot`` (support as history), ``popularity``, the cohort strategies of
``--cohort`` (one adapter per fold cohort, selection on inner folds of the supports), ``per-user``
(a user-state offset per user, fitted on the user's own support, self-selected per user),
``cohort+per-user`` (the offsets on top of the best cohort adapter) and ``auto``. Every adapted
method gets a paired ``relative_gain`` over zero-shot on the same users (95 % bootstrap over
users). Per-user fitting cost: ``ms_per_user`` (wall clock of one fold's cohort fitted together
/ its users).

    python -m bench.fewshot --dataset ml-100k --pretrain-only        # fold checkpoints (cached)
    python -m bench.fewshot --dataset ml-100k                        # the table
    python -m bench.fewshot --dataset beauty
    python -m bench.fewshot --aggregate-only                         # rewrite the JSON
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

if __package__ in (None, ""):  # `python bench/fewshot.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")
KS = [1, 3, 5, 10]


def fold_splits(dataset: str, args) -> list:
    """The cold-user folds of ``dataset`` (ML-100K: user folds; Beauty: one cold sample)."""
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.experiments.coldstart import user_folds

    data = load_dataset(dataset, args.data_dir)
    all_warm = make_splits(data, SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))
    if dataset == "beauty":
        # one pretraining: a fold of size beauty_cold out of ceil(eligible / beauty_cold) folds
        n_elig = sum(1 for s in all_warm.warm if len(s) >= args.beauty_min_len)
        n_folds = max(2, n_elig // args.beauty_cold)
        return user_folds(all_warm, n_folds, seed=0, min_len=args.beauty_min_len)[:1]
    return user_folds(all_warm, args.folds, seed=0, min_len=11)


def model_overrides(dataset: str, args) -> tuple[dict, dict]:
    """(FsRecConfig overrides, TrainConfig overrides) of the pretraining."""
    mo, to = {}, dict(device=args.device, num_threads=args.num_threads, progress=False)
    if dataset == "beauty":  # capped budget (2 shared cores): shorter history, fewer epochs
        mo.update(max_seq_len=args.beauty_max_seq_len)
        to.update(epochs=args.beauty_epochs, max_train_seconds=args.beauty_seconds)
    else:  # capped budget: the lr schedule spans --epochs; cold histories are <= 10 items
        mo.update(max_seq_len=args.max_seq_len)
        to.update(epochs=args.epochs, patience=args.patience)
    if args.quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
        to.update(epochs=2, patience=0, max_train_seconds=None)
    return mo, to


def fold_model(dataset: str, fold: int, splits, args, log):
    """The cached pretrained model of one fold (pretrained and cached when missing)."""
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import default_model_config, default_train_config, pretrain

    mo, to = model_overrides(dataset, args)
    tag = "quick" if args.quick else ("b" if dataset == "beauty" else f"f{args.folds}")
    out = Path(args.cache) / f"{dataset}-causal-{tag}-fold{fold}"
    if (out / "model.safetensors").exists() and (out / "fsrec_run.json").exists():
        return FsRecModel.from_pretrained(str(out)).eval(), json.loads((out / "fsrec_run.json").read_text())
    log(f"  pretraining {dataset} fold {fold} ({len(splits.warm)} warm, {len(splits.cold_users)} cold) -> {out}")
    tmp = out.with_name(out.name + ".partial")  # a failed run never replaces a finished one
    mc = default_model_config(splits, "causal", **mo)
    tc = default_train_config(splits, "causal", output_dir=str(tmp), seed=fold, **to)
    res = pretrain(splits, mc, tc)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return res.model.eval(), json.loads((out / "fsrec_run.json").read_text())


COHORT = ["head_only+warm", "lora+warm"]
METRICS = ("hr@10", "ndcg@10")


def run_fold_k(dataset: str, fold: int, k: int, model, splits, args, log) -> dict:
    """One (fold, k) record (cached as JSON: a rerun continues where it stopped)."""
    from fsrec_serve.adaptation import AdaptConfig, PerUserConfig
    from fsrec_serve.experiments.coldstart import kshot_fold

    tag = "quick" if args.quick else ("b" if dataset == "beauty" else f"f{args.folds}")
    path = Path(args.cache) / f"kshot-{dataset}-{tag}-fold{fold}-k{k}.json"
    if path.exists() and not args.fresh:
        return json.loads(path.read_text())
    cfg = AdaptConfig(seed=fold, device=args.device, num_threads=args.num_threads,
                      auto_candidates=[{"strategy": s} for s in args.auto_candidates],
                      **({"epochs": 3, "patience": 2} if args.quick else {}), **json.loads(args.adapt))
    pcfg = PerUserConfig(**json.loads(args.peruser))
    rec = kshot_fold(model, splits, k, args.cohort, cfg, pcfg, log=log, max_warm=args.max_warm)
    rec.update(dataset=dataset, fold=fold)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    tmp.replace(path)
    return rec


def aggregate(records: list[dict], n_boot: int = 2000) -> tuple[list[dict], dict]:
    """Per-(fold, k) records -> BENCH_SCHEMA rows (users of all folds pooled) + details."""
    import numpy as np

    from bench.common import summarize
    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.coldstart import paired_relative_gain

    rows, details = [], {}
    by: dict = {}
    for r in records:
        by.setdefault((r["dataset"], r["k"]), []).append(r)
    for (ds, k), recs in sorted(by.items()):
        proto = f"coldstart-k{k}"
        methods = list(dict.fromkeys(m for r in recs for m in r["methods"]))
        zs = np.concatenate([ndcg_at_k(r["methods"]["zero-shot"]["ranks"], 10) for r in recs])
        for m in methods:
            rr = [r for r in recs if m in r["methods"]]
            if len(rr) != len(recs):
                continue  # a method must cover every fold to be paired with zero-shot
            ranks = np.concatenate([r["methods"][m]["ranks"] for r in rr])
            nd, hr = ndcg_at_k(ranks, 10), (ranks < 10).astype(float)
            n = int(ranks.size)
            for met, vals in (("hr@10", hr), ("ndcg@10", nd)):
                rows.append({"dataset": ds, "protocol": proto, "method": m, "metric": met,
                             "mean": float(vals.mean()), "std": float(vals.std(ddof=1) / np.sqrt(n)),
                             "n": n})
            infos = [r["methods"][m]["info"] for r in rr]
            secs = [r["methods"][m]["seconds"] for r in rr]
            details[f"{ds}/{proto}/{m}"] = {"folds": len(rr), "seconds_per_fold": [round(x, 2) for x in secs],
                                            "info_per_fold": infos}
            if m not in ("zero-shot", "popularity"):
                g = paired_relative_gain(zs, nd, n_boot=n_boot, seed=k)
                rows.append({"dataset": ds, "protocol": proto, "method": m, "metric": "relative_gain",
                             **g, "std": 0.0, "n": 1})
                rows.append(summarize(secs, dataset=ds, protocol=proto, method=m, metric="seconds"))
            mspu = [i["ms_per_user"] for i in infos if i.get("ms_per_user") is not None]
            if mspu:
                rows.append(summarize(mspu, dataset=ds, protocol=proto, method=m, metric="ms_per_user"))
    return rows, details


def fast_peruser_rows(dataset: str, args, log) -> list[dict]:
    """``per-user-fast``: the per-user fit with ONE lr and the candidate softmax (the cost
    configuration), on every fold at k=5: ndcg@10, relative_gain over zero-shot, ms_per_user."""
    import numpy as np

    from bench.common import summarize
    from fsrec_serve.adaptation import PerUserConfig, fit_user_params
    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.coldstart import paired_relative_gain, query_ranks

    cfg = PerUserConfig(**json.loads(args.fast_peruser))
    zs, ad, ms, cpu = [], [], [], []
    for f, sp in enumerate(fold_splits(dataset, args)):
        path = Path(args.cache) / f"fast-{dataset}-f{args.folds}-fold{f}-k5.json"
        if not path.exists():
            model, _ = fold_model(dataset, f, sp, args, log)
            support, query = sp.support_query(5)
            res = fit_user_params(model, support, cfg)
            rec = {"zero": query_ranks(model, query).tolist(),
                   "fast": query_ranks(model, query, res.params_for([e.user for e in query])).tolist(),
                   "ms_per_user": 1000 * res.info["seconds"] / len(support),
                   "cpu_ms_per_user": 1000 * res.info["cpu_seconds"] / len(support), "config": vars(cfg)}
            path.write_text(json.dumps(rec) + "\n")
            log(f"  per-user-fast fold {f}: {rec['ms_per_user']:.1f} ms/user ({rec['cpu_ms_per_user']:.1f} CPU)")
        rec = json.loads(path.read_text())
        zs.append(ndcg_at_k(rec["zero"], 10))
        ad.append(ndcg_at_k(rec["fast"], 10))
        ms.append(rec["ms_per_user"])
        cpu.append(rec["cpu_ms_per_user"])
    z, a = np.concatenate(zs), np.concatenate(ad)
    base = dict(dataset=dataset, protocol="coldstart-k5", method="per-user-fast")
    return [dict(base, metric="ndcg@10", mean=float(a.mean()), std=float(a.std(ddof=1) / np.sqrt(a.size)), n=int(a.size)),
            dict(base, metric="relative_gain", **paired_relative_gain(z, a, seed=5), std=0.0, n=1),
            summarize(ms, **base, metric="ms_per_user"),
            summarize(cpu, **base, metric="cpu_ms_per_user")]


def carried_rows(name: str, protocols) -> dict:
    """Rows of ``protocols`` from the existing results file (protocols this script no longer
    runs, e.g. ``forgetting``), with a note naming the run they come from."""
    from bench.common import RESULTS_DIR

    path = RESULTS_DIR / f"{name}.json"
    if not protocols or not path.exists():
        return {"rows": [], "note": ""}
    old = json.loads(path.read_text())
    rows = [r for r in old.get("results", []) if r.get("protocol") in protocols]
    note = (f"{', '.join(protocols)}: carried over unchanged from the earlier run "
            f"`{old.get('command')}` (commit {old.get('git_commit')}, {old.get('date')}).")
    if rows and old.get("notes"):
        prior = [n for n in old["notes"] if any(n.startswith(p) for p in protocols)]
        note = " ".join([note] + prior)
    return {"rows": rows, "note": note}


COMMANDS = [
    "nice -n 10 python -m bench.fewshot --dataset ml-100k --ks 5 1 3 10 --cohort head_only+warm  (one "
    "process per fold: --only-folds 0 / 1)",
    "nice -n 10 python -m bench.fewshot --dataset beauty --ks 5 --cohort head_only+warm --auto-candidates "
    "head_only --max-warm 3000 --adapt '{\"epochs\": 10, \"patience\": 3}' --peruser '{\"lrs\": [0.03, "
    "0.1], \"steps\": [10, 30], \"candidates\": 256, \"users_per_chunk\": 256}'  (Beauty pretraining "
    "stopped by hand after epoch 1, see docs/adaptation.md)",
    "python -m bench.fewshot --aggregate-only --fast-peruser '{\"lrs\": [0.03], \"steps\": [10, 30], "
    "\"candidates\": 256}'",
]
NOTES = [
    "std of hr@10/ndcg@10 = standard error over users (n = users, all folds pooled); relative_gain = "
    "adapted mean / zero-shot mean - 1 on the same users, 95 % bootstrap CI resampling users "
    "(ci_low, ci_high, n_users).",
    "Selection (cohort strategy, auto's candidate and passes, per-user lr/steps and the per-user "
    "rule) uses the supports only (the last support item held out); query items are only scored.",
    "ms_per_user = wall clock of one fold's cohort of per-user offsets fitted together (including "
    "its inner check and lr/steps grid) / its users, on the shared 2-core CPU (other jobs running).",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="ml-100k or beauty")
    p.add_argument("--folds", type=int, default=2, help="ML-100K user folds (one pretraining each)")
    p.add_argument("--epochs", type=int, default=10, help="ML-100K pretraining epochs (budget)")
    p.add_argument("--patience", type=int, default=3, help="ML-100K early-stopping patience")
    p.add_argument("--max-seq-len", type=int, default=50, help="ML-100K history cap (budget)")
    p.add_argument("--ks", nargs="+", type=int, default=KS)
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 2)))
    p.add_argument("--beauty-cold", type=int, default=3800, help="Beauty cold users (one fold)")
    p.add_argument("--beauty-min-len", type=int, default=6, help="Beauty cold users' least length")
    p.add_argument("--beauty-max-seq-len", type=int, default=20, help="Beauty history cap (budget)")
    p.add_argument("--beauty-epochs", type=int, default=3, help="Beauty pretraining epochs (budget)")
    p.add_argument("--beauty-seconds", type=float, default=900.0, help="Beauty pretraining wall-clock cap")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 epochs")
    p.add_argument("--cache", default="runs/fewshot", help="fold checkpoints + per-fold records")
    p.add_argument("--pretrain-only", action="store_true")
    p.add_argument("--only-folds", nargs="+", type=int, default=None)
    p.add_argument("--cohort", nargs="+", default=COHORT,
                   help="cohort strategies (adapt()); '<strategy>+warm' adds warm users' short prefixes")
    p.add_argument("--auto-candidates", nargs="+", default=["head_only", "lora"],
                   help="strategies auto chooses among (besides zero_shot)")
    p.add_argument("--peruser", default='{"lrs": [0.03, 0.1], "steps": [10, 30]}',
                   help="JSON of PerUserConfig fields")
    p.add_argument("--adapt", default="{}", help="JSON of AdaptConfig fields (cohort adapters, auto)")
    p.add_argument("--max-warm", type=int, default=None,
                   help="'+warm' cohorts: at most this many pretraining users' prefixes (budget)")
    p.add_argument("--keep-protocols", nargs="*", default=["forgetting"],
                   help="protocols of the existing results file to carry over (not run here)")
    p.add_argument("--fast-peruser", default=None,
                   help="JSON PerUserConfig of the cost run (ML-100K, k=5, every fold): per-user-fast rows")
    p.add_argument("--fresh", action="store_true", help="ignore cached (fold, k) records")
    p.add_argument("--aggregate-only", action="store_true", help="only summarise cached records")
    p.add_argument("--out", default=None, help="results name (default fewshot / fewshot-quick)")
    args = p.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    import torch

    torch.set_num_threads(args.num_threads)
    records = []
    datasets = ["ml-100k", "beauty"] if args.aggregate_only else [args.dataset]
    for ds in datasets:
        if args.aggregate_only:
            tag = "quick" if args.quick else ("b" if ds == "beauty" else f"f{args.folds}")
            records += [json.loads(p.read_text()) for p in sorted(Path(args.cache).glob(f"kshot-{ds}-{tag}-fold*-k*.json"))]
            continue
        folds = fold_splits(ds, args)
        for f, sp in enumerate(folds):
            if args.only_folds is not None and f not in args.only_folds:
                continue
            model, info = fold_model(ds, f, sp, args, log)
            log(f"{ds} fold {f}: best epoch {info.get('best_epoch')} valid {info.get('best_valid')}")
            if args.pretrain_only:
                continue
            for k in args.ks:
                records.append(run_fold_k(ds, f, k, model, sp, args, log))
    if args.pretrain_only:
        return 0
    if not args.aggregate_only:  # every cached record (other folds, the other data set) is in the table
        records = []
        for ds in ("ml-100k", "beauty"):
            tag = "quick" if args.quick else ("b" if ds == "beauty" else f"f{args.folds}")
            records += [json.loads(p.read_text()) for p in sorted(Path(args.cache).glob(f"kshot-{ds}-{tag}-fold*-k*.json"))]
    rows, details = aggregate(records)
    name = args.out or ("fewshot-quick" if args.quick else "fewshot")
    kept = carried_rows(name, args.keep_protocols)
    rows += kept["rows"]
    if args.fast_peruser:
        rows += fast_peruser_rows("ml-100k", args, log)
    command = "python -m bench.fewshot " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:]) if a != "--aggregate-only")
    notes = NOTES + ([kept["note"]] if kept["rows"] else [])
    out = write_results(name, command, rows, extra={"notes": notes, "details": details, "commands": COMMANDS,
                                                    "wall_seconds": time.time() - t0})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
