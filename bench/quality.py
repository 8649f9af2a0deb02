"""Quality benchmark: leave-one-out, full ranking over EVERY user (own history excluded).

Methods: ``fsrec-bert4rec`` (cloze objective), ``fsrec-sasrec`` (causal objective), ``popularity``.
Each (data set, method, seed) pretraining runs in a fresh child process, so ``peak_mb`` (peak
resident memory, ``getrusage``) is that run's own. ``seconds`` is the wall-clock time from the
start of training to the end of the best validation epoch (early stopping picks it on the
validation item; the test item is only used for the reported numbers).

    python -m bench.quality --datasets ml-100k --seeds 0 1 2
    python -m bench.quality --datasets beauty --seeds 0
    python -m bench.quality --quick            # smoke run: tiny model, 2 epochs, 1 seed
    python -m bench.quality --device cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import resource
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/quality.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {"fsrec-bert4rec": "cloze", "fsrec-sasrec": "causal", "popularity": None,
           "plain-sasrec": "plain"}  # plain-sasrec: bench/plain_sasrec.py, the reference recipe
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def _splits(dataset: str, data_dir):
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits

    return make_splits(load_dataset(dataset, data_dir),
                       SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))


def valid_sample(examples: list, n: int | None, seed: int = 0) -> list:
    """A fixed random sample of ``n`` validation examples (all of them when n is None or larger):
    early stopping reads it every epoch; the test item is always ranked for every user."""
    if not n or n >= len(examples):
        return list(examples)
    import numpy as np

    idx = np.sort(np.random.default_rng(seed).choice(len(examples), size=n, replace=False))
    return [examples[i] for i in idx]


def run_one(dataset: str, objective: str, seed: int, data_dir, device: str, num_threads: int,
            quick: bool, model_over: dict, train_over: dict, valid_users: int | None = None) -> dict:
    """Pretrain one model and evaluate it on the test item (runs in a child process)."""
    import torch

    from fsrec_serve.evaluation import evaluate_next_item
    from fsrec_serve.training import default_model_config, default_train_config, pretrain

    torch.set_num_threads(num_threads)
    splits = _splits(dataset, data_dir)
    mo = dict(model_over)
    to = dict(seed=seed, device=device, num_threads=num_threads, progress=False)
    if quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1)
        to.update(epochs=2, patience=0)
    to.update(train_over)
    mc = default_model_config(splits, objective, **mo)
    tc = default_train_config(splits, objective, **to)
    valid = valid_sample(splits.loo_valid(), valid_users)
    res = pretrain(splits, mc, tc, valid_examples=valid)
    test = evaluate_next_item(res.model, splits.loo_test(), ks=(5, 10, 20),
                              batch_size=tc.eval_batch_size)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "dataset": dataset, "objective": objective, "seed": seed,
        "test": {k: v for k, v in test.items() if k != "n"}, "n_users": test["n"],
        "best_valid": res.best_valid, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
        "stopped_early": res.stopped_early, "n_valid_users": len(valid),
        "history": [{k: round(h[k], 5) for k in ("epoch", "loss", "valid_ndcg@10", "seconds") if k in h}
                    for h in res.history],
        "seconds_to_best": res.seconds_to_best, "seconds_total": res.seconds,
        "cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_mb": res.peak_mb,
        "model_config": {k: getattr(mc, k) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_seq_len", "hidden_dropout_prob", "attention_probs_dropout_prob", "mask_prob",
            "num_item_features", "rating_head")},
        "train_config": tc.to_dict(),
    }


def run_plain(dataset: str, seed: int, data_dir, num_threads: int, quick: bool, over: dict,
              valid_users: int | None = None) -> dict:
    """Train the independent plain SASRec and evaluate it on the test item (in a child process)."""
    import torch

    from bench.plain_sasrec import PlainConfig, train_plain
    from fsrec_serve.evaluation import evaluate_next_item

    torch.set_num_threads(num_threads)
    splits = _splits(dataset, data_dir)
    cfg = PlainConfig(**({"epochs": 2, "hidden": 32, "layers": 1, "max_len": 20} if quick else {}), **over)
    valid = valid_sample(splits.loo_valid(), valid_users)
    r = train_plain(splits, cfg, valid, seed=seed)
    test = evaluate_next_item(r.pop("model"), splits.loo_test(), ks=(5, 10, 20))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"dataset": dataset, "objective": "causal", "seed": seed,
            "test": {k: v for k, v in test.items() if k != "n"}, "n_users": test["n"],
            "epochs_run": len(r["history"]), "stopped_early": len(r["history"]) < cfg.epochs,
            "n_valid_users": len(valid), "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "peak_mb": ru.ru_maxrss / 1024, "plain_config": vars(cfg), **r}


def run_popularity(dataset: str, data_dir) -> dict:
    from fsrec_serve.evaluation import PopularityModel, evaluate_next_item

    splits = _splits(dataset, data_dir)
    ex = splits.loo_test()
    t0 = time.perf_counter()
    pop = PopularityModel.fit([e.history for e in ex], len(splits.item_map))
    seconds = time.perf_counter() - t0
    m = evaluate_next_item(pop, ex, ks=(5, 10, 20))
    return {"dataset": dataset, "test": {k: v for k, v in m.items() if k != "n"},
            "n_users": m["n"], "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["ml-100k"], help="ml-100k and/or beauty")
    p.add_argument("--dataset", dest="datasets", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--jobs", type=int, default=1,
                   help="seeds trained at the same time, one process each (default 1: one after another)")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 2)),
                   help="torch CPU threads per run")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 epochs")
    p.add_argument("--epochs", type=int, default=None, help="override the recommended epochs")
    p.add_argument("--max-train-seconds", type=float, default=None, help="budget per run")
    p.add_argument("--model-override", default="{}", help="JSON of FsRecConfig fields")
    p.add_argument("--train-override", default="{}", help="JSON of TrainConfig fields")
    p.add_argument("--valid-users", type=int, default=None,
                   help="early stopping on a fixed random sample of this many validation users "
                        "(default: all); test is always every user")
    p.add_argument("--variant", default=None,
                   help="name the fsrec methods fsrec-<objective>-VARIANT (an ablation row: the "
                        "overrides it names)")
    p.add_argument("--plain-override", default="{}", help="JSON of PlainConfig fields (plain-sasrec)")
    p.add_argument("--out", default=None, help="results name (default quality, quality-quick)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other data sets/methods already in the results file (their "
                        "command is kept next to this one)")
    args = p.parse_args(argv)
    if args.data_dir is None and not os.environ.get("FSREC_DATA_DIR"):
        shared = REPO.parent / "shared" / "data"  # this sandbox's layout
        args.data_dir = str(shared) if shared.exists() else None
    if args.quick and args.seeds == [0, 1, 2]:
        args.seeds = [0]
    name = args.out or ("quality-quick" if args.quick else "quality")
    model_over = json.loads(args.model_override)
    train_over = json.loads(args.train_override)
    if args.epochs is not None:
        train_over["epochs"] = args.epochs
    if args.max_train_seconds is not None:
        train_over["max_train_seconds"] = args.max_train_seconds

    runs, results = [], []
    command = "python -m bench.quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def write(partial: list[dict]) -> Path:
        return _write(name, command, args, results + partial, runs)

    ctx = mp.get_context("spawn")
    for dataset in args.datasets:
        for method in args.methods:
            objective = METHODS[method]
            if objective is None:
                r = run_popularity(dataset, args.data_dir)
                runs.append({"method": method, **r})
                print(json.dumps({"method": method, "dataset": dataset, **r["test"]}), flush=True)
                for m in METRICS:
                    results.append(summarize([r["test"][m]], dataset=dataset, protocol="loo-full",
                                             method=method, metric=m))
                continue
            label = f"{method}-{args.variant}" if args.variant and objective != "plain" else method
            # one child process per seed (its own peak memory), --jobs of them at a time
            with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, max_tasks_per_child=1) as ex:
                futures = [
                    ex.submit(run_plain, dataset, seed, args.data_dir, args.num_threads, args.quick,
                              json.loads(args.plain_override), args.valid_users) if objective == "plain"
                    else ex.submit(run_one, dataset, objective, seed, args.data_dir, args.device,
                                   args.num_threads, args.quick, model_over, train_over, args.valid_users)
                    for seed in args.seeds]
                per_seed = _collect(futures, args.seeds, label, dataset, runs, write)
            results.extend(_method_rows(per_seed, dataset, label))
    print(f"wrote {write([])}")
    return 0


def _collect(futures: list, seeds: list, label: str, dataset: str, runs: list, write) -> list[dict]:
    """The seeds' results in seed order, each printed and added to ``runs`` when read; the results
    file is rewritten after each seed but the last (partial: n = seeds done so far)."""
    per_seed = []
    for seed, fut in zip(seeds, futures):
        r = fut.result()
        r["method"] = label
        per_seed.append(r)
        runs.append(r)
        print(json.dumps({"method": label, "dataset": dataset, "seed": seed,
                          **{m: round(r["test"][m], 4) for m in METRICS},
                          "valid_ndcg@10": round(r["best_valid"].get("ndcg@10", 0), 4),
                          "best_epoch": r["best_epoch"],
                          "seconds_to_best": round(r["seconds_to_best"], 1),
                          "peak_mb": round(r["peak_mb"])}), flush=True)
        if seed != seeds[-1]:
            print(f"wrote {write(_method_rows(per_seed, dataset, label))} (partial)", flush=True)
    return per_seed


def _method_rows(per_seed: list[dict], dataset: str, method: str) -> list[dict]:
    """The summary rows (mean/std/n over seeds) of one method."""
    rows = [summarize([r["test"][m] for r in per_seed], dataset=dataset, protocol="loo-full",
                      method=method, metric=m) for m in METRICS]
    rows.append(summarize([r["seconds_to_best"] for r in per_seed], dataset=dataset,
                          protocol="loo-full", method=method, metric="seconds"))
    rows.append(summarize([r["peak_mb"] for r in per_seed], dataset=dataset,
                          protocol="loo-full", method=method, metric="peak_mb"))
    return rows


def _write(name: str, command: str, args, results: list[dict], runs: list[dict]) -> Path:
    """Write the results file (with --merge: keeping the other data sets/methods of the old one)."""
    commands = {d: command for d in args.datasets}
    if args.merge:
        from bench.common import RESULTS_DIR

        old_path = RESULTS_DIR / f"{name}.json"
        if old_path.exists():
            old = json.loads(old_path.read_text())
            done = {(r["dataset"], r["method"]) for r in results}
            results = [r for r in old.get("results", []) if (r["dataset"], r["method"]) not in done] + results
            runs = [r for r in old.get("runs", []) if (r["dataset"], r["method"]) not in done] + runs
            commands = {**old.get("commands", {}), **commands}
            command = " ; ".join(dict.fromkeys(commands.values()))
    path = write_results(name, command, results, extra={
        "commands": commands,
        "notes": ("leave-one-out over every user, full ranking over the whole catalogue with the "
                  "user's own history excluded; hyperparameters from "
                  "fsrec_serve.training.recommended_config (with the command's overrides), early "
                  "stopping on the validation item"
                  + (f" of {args.valid_users} sampled users" if args.valid_users else "")
                  + "; seconds = wall-clock to the best validation epoch on a machine shared with "
                  "other jobs (cpu_seconds per run in runs[]; per-epoch curves in runs[].history)"),
        "runs": runs,
    })
    return path


if __name__ == "__main__":
    sys.exit(main())
