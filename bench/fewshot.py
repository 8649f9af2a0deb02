"""Few-shot benchmark: cold-start users (k-shot), cold-start items, continual re-fine-tuning.

For every (data set, seed): the default split (``SplitConfig(seed)``: 10% of the users with >= 11
interactions and 5% of the items held out of pretraining), one pretrained BERT4Rec-style model
(cached under ``--cache``), then

* ``coldstart-k{1,3,5,10}``: every strategy (popularity, zero-shot, head-only, full, lora, adalora,
  ia3, prefix, prompt, auto) adapted once per cohort on the support sets; HR@10 / NDCG@10 of the
  (k+1)-th interaction, full ranking, support items excluded; adapter size (KB) and adaptation
  seconds per cohort;
* ``coldstart-items``: cold items before (side features only) and after learning their id
  vectors from their first 3 interactions;
* ``forgetting``: warm users' leave-one-out NDCG@10 before/after re-fine-tuning on the new slice
  (cold users' sequences) with LoRA + replay, and with full fine-tuning without replay.

Results: ``bench/results/fewshot.json`` (mean ± std over seeds, shared/BENCH_SCHEMA.md);
per-seed raw numbers go to ``<cache>/fewshot-<dataset>-s<seed>.json`` first, so an interrupted run
resumes where it stopped.

    python -m bench.fewshot --datasets ml-100k --seeds 0 1 2          # the k-shot table
    python -m bench.fewshot --datasets beauty --seeds 0 1 2
    python -m bench.fewshot --quick                                     # smoke run (minutes)
    python -m bench.fewshot --device cuda --datasets ml-100k beauty     # on a GPU machine
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

from bench.common import summarize, write_results  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")
STRATEGIES = ["popularity", "zero_shot", "head_only", "full", "lora", "adalora", "ia3", "prefix",
              "prompt", "auto"]
KS = [1, 3, 5, 10]


def method_name(strategy: str) -> str:
    return strategy.replace("_", "-")


def pretrained_model(dataset: str, splits, seed: int, args, log):
    """Load the cached pretrained model of (dataset, seed) or pretrain and cache it."""
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import default_model_config, default_train_config, pretrain

    mo = dict(max_seq_len=args.max_seq_len)
    to = dict(seed=seed, device=args.device, num_threads=args.num_threads, progress=False,
              max_train_seconds=args.pretrain_seconds)
    if args.pretrain_epochs:
        to.update(epochs=args.pretrain_epochs)
    if args.quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
        to.update(epochs=2, patience=0, max_train_seconds=None)
    tag = "quick" if args.quick else f"L{mo['max_seq_len']}" + (f"-e{args.pretrain_epochs}" if args.pretrain_epochs else "")
    out = Path(args.cache) / f"{dataset}-cloze-s{seed}-{tag}"
    if (out / "model.safetensors").exists() and (out / "fsrec_run.json").exists():  # finished runs only
        log(f"  using cached pretrained model {out}")
        return FsRecModel.from_pretrained(str(out)).eval(), json.loads((out / "fsrec_run.json").read_text())
    log(f"  pretraining {dataset} seed {seed} -> {out}")
    mc = default_model_config(splits, "cloze", **mo)
    tc = default_train_config(splits, "cloze", output_dir=str(out), **to)
    res = pretrain(splits, mc, tc)
    return res.model.eval(), json.loads((out / "fsrec_run.json").read_text())


def adapt_config(args, seed: int):
    from fsrec_serve.adaptation import AdaptConfig

    kw = dict(seed=seed, device=args.device, num_threads=args.num_threads)
    if args.quick:
        kw.update(epochs=3, patience=2, auto_candidates=[{"strategy": "head_only"},
                                                         {"strategy": "lora"}])
    kw.update(json.loads(args.adapt_override))
    return AdaptConfig(**kw)


def run_seed(dataset: str, seed: int, args, log, partial: Path | None = None) -> dict:
    """All protocols for one (data set, seed); returns the raw per-seed record. With ``partial``
    the record is saved after every step and a rerun continues where it stopped."""
    import torch

    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.evaluation.fewshot import (coldstart_items, coldstart_users, forgetting,
                                                interaction_times)

    torch.set_num_threads(args.num_threads)
    data = load_dataset(dataset, args.data_dir)
    splits = make_splits(data, SplitConfig(seed=seed))
    model, run_info = pretrained_model(dataset, splits, seed, args, log)
    cfg = adapt_config(args, seed)
    rec: dict = {"dataset": dataset, "seed": seed, "split": splits.summary(),
                 "pretrain": {k: run_info.get(k) for k in ("best_epoch", "best_valid", "seconds",
                                                           "epochs_run")},
                 "kshot": {}, "items": None, "forgetting": {}}
    if partial is not None and partial.exists():
        rec.update({k: v for k, v in json.loads(partial.read_text()).items()
                    if k in ("kshot", "items", "forgetting")})
        log(f"  resuming from {partial}")

    def save() -> None:
        if partial is not None:
            partial.write_text(json.dumps(rec, indent=1, default=float) + "\n")

    for k in args.ks:
        if str(k) in rec["kshot"]:
            continue
        runs = coldstart_users(model, splits, k, args.strategies, cfg)
        rec["kshot"][str(k)] = [{
            "strategy": r.strategy, "metrics": r.metrics, "seconds": r.seconds, "size_kb": r.size_kb,
            "cpu_seconds": r.cpu_seconds,
            "chosen": r.info.get("chosen", {}).get("strategy") if r.strategy == "auto" else None,
            "inner": r.info.get("inner"), "degraded": r.info.get("degraded"),
            "candidates": [{kk: c.get(kk) for kk in ("strategy", "lr", "lora_r", "inner_ndcg@10", "passes")}
                           for c in r.info.get("candidates", [])] or None,
        } for r in runs]
        log("  k=%d: %s" % (k, ", ".join(f"{r.strategy} {r.metrics['ndcg@10']:.4f}" for r in runs)))
        if args.per_user and k in (5,):
            pu = coldstart_users(model, splits, k, ["lora"], cfg, per_user=True, measure_size=False)[0]
            rec["kshot"][str(k)].append({"strategy": "lora_per_user", "metrics": pu.metrics,
                                         "seconds": pu.seconds, "size_kb": 0.0})
            log(f"  k={k}: lora per user {pu.metrics['ndcg@10']:.4f}")
        save()
    if not args.skip_items and rec["items"] is None:
        ts = interaction_times(data) if data.has_timestamps else None
        rec["items"] = coldstart_items(model, splits, n_adapt=3, config=cfg, timestamps=ts,
                                       max_eval=args.max_eval, seed=seed)
        it = rec["items"]
        log(f"  cold items: before {it['before']['ndcg@10']:.4f} after {it['after']['ndcg@10']:.4f} "
            f"(popularity {it['popularity']['ndcg@10']:.4f}, n={it['n_eval']})")
        save()
    if not args.skip_forgetting:
        for name, strategy, ratio in (("lora-replay", "lora", 1.0), ("full-noreplay", "full", 0.0)):
            if name in rec["forgetting"]:
                continue
            f = forgetting(model, splits, strategy, cfg, replay_ratio=ratio, max_warm=args.max_eval,
                           seed=seed)
            rec["forgetting"][name] = f
            log(f"  forgetting {name}: warm {f['warm_before']['ndcg@10']:.4f} -> "
                f"{f['warm_after']['ndcg@10']:.4f} (ratio {f['forgetting_ratio']:.3f}); new users "
                f"{f['new_before']['ndcg@10']:.4f} -> {f['new_after']['ndcg@10']:.4f}")
            save()
    return rec


def aggregate(records: list[dict]) -> tuple[list[dict], dict]:
    """Per-seed records -> (BENCH_SCHEMA rows with mean ± std over seeds, details per row key).

    Rows carry only the schema fields so that each method renders as one table row; the rest
    (users per seed, auto's choices, CPU seconds, new-user numbers) goes into ``details``."""
    rows, details = [], {}

    def add(vals, ds, proto, method, metric, **info):
        rows.append(summarize(vals, dataset=ds, protocol=proto, method=method, metric=metric))
        if info:
            details.setdefault(f"{ds}/{proto}/{method}", {}).update(info)

    by_ds: dict[str, list[dict]] = {}
    for r in records:
        by_ds.setdefault(r["dataset"], []).append(r)
    for ds, recs in by_ds.items():
        ks = sorted({int(k) for r in recs for k in r["kshot"]})
        for k in ks:
            strategies = []
            for r in recs:
                for e in r["kshot"].get(str(k), []):
                    if e["strategy"] not in strategies:
                        strategies.append(e["strategy"])
            for st in strategies:
                es = [e for r in recs for e in r["kshot"].get(str(k), []) if e["strategy"] == st]
                proto, m = f"coldstart-k{k}", method_name(st)
                info = {"users_per_seed": [int(e["metrics"]["n"]) for e in es]}
                if st == "auto":
                    info["chosen_per_seed"] = [e["chosen"] for e in es]
                for met in ("hr@10", "ndcg@10"):
                    add([e["metrics"][met] for e in es], ds, proto, m, met, **info)
                if st not in ("popularity", "zero_shot"):
                    add([e["seconds"] for e in es], ds, proto, m, "seconds",
                        cpu_seconds_per_seed=[round(e.get("cpu_seconds", 0.0), 2) for e in es],
                        wall_seconds_per_seed=[round(e["seconds"], 2) for e in es])
                    if any(e["size_kb"] for e in es):
                        add([e["size_kb"] for e in es], ds, proto, m, "size_kb")
        items = [r["items"] for r in recs if r.get("items")]
        if items:
            for method, key in (("popularity", "popularity"), ("zero-shot", "before"),
                                ("item-embeddings", "after")):
                for met in ("hr@10", "ndcg@10"):
                    add([i[key][met] for i in items], ds, "coldstart-items", method, met,
                        events_per_seed=[i["n_eval"] for i in items])
            add([i["seconds"] for i in items], ds, "coldstart-items", "item-embeddings", "seconds")
            add([i["size_kb"] for i in items], ds, "coldstart-items", "item-embeddings", "size_kb")
            add([i["warm_after"]["ndcg@10"] / i["warm_before"]["ndcg@10"] for i in items], ds,
                "coldstart-items", "item-embeddings", "ratio",
                ratio="warm users' LOO NDCG@10 after / before learning the cold items")
        fg = [r["forgetting"] for r in recs if r.get("forgetting")]
        if fg:
            add([f[next(iter(f))]["warm_before"]["ndcg@10"] for f in fg], ds, "forgetting", "zero-shot",
                "ndcg@10", ndcg="warm users' LOO test before re-fine-tuning")
            for name in fg[0]:
                vals = [f[name] for f in fg if name in f]
                info = {"new_users_ndcg@10_before": [round(v["new_before"]["ndcg@10"], 4) for v in vals],
                        "new_users_ndcg@10_after": [round(v["new_after"]["ndcg@10"], 4) for v in vals]}
                add([v["warm_after"]["ndcg@10"] for v in vals], ds, "forgetting", name, "ndcg@10", **info)
                add([v["forgetting_ratio"] for v in vals], ds, "forgetting", name, "ratio")
                add([v["seconds"] for v in vals], ds, "forgetting", name, "seconds")
    return rows, details


NOTES = [
    "coldstart-k*: cold users (never in pretraining), support = first k interactions, query = the "
    "(k+1)-th, full ranking, support items excluded; one adaptation per cohort on the support sets "
    "only; seconds = wall-clock per cohort (inner split + early stopping + refit) on a shared "
    "2-core machine (see details for CPU seconds).",
    "coldstart-items: events of warm users whose target is a cold item (first 3 events per item = "
    "adaptation data, the rest evaluated); zero-shot = side features only; ratio = warm users' "
    "LOO NDCG@10 after / before.",
    "forgetting: warm users' LOO test NDCG@10 after re-fine-tuning on the cold users' sequences; "
    "ratio = after / before (goal >= 0.98).",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["ml-100k"], help="ml-100k and/or beauty")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ks", nargs="+", type=int, default=KS)
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 2)))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 epochs, k in 1 5")
    p.add_argument("--max-seq-len", type=int, default=50, help="pretrained model's history length")
    p.add_argument("--pretrain-epochs", type=int, default=40,
                   help="pretraining epochs (the lr schedule spans them); 0 = the recommended 200")
    p.add_argument("--pretrain-seconds", type=float, default=0.0,
                   help="wall-clock budget of each pretraining; 0 = none")
    p.add_argument("--adapt-override", default="{}", help="JSON of AdaptConfig fields")
    p.add_argument("--per-user", action="store_true", help="also LoRA micro-tuning per user at k=5")
    p.add_argument("--skip-items", action="store_true")
    p.add_argument("--skip-forgetting", action="store_true")
    p.add_argument("--max-eval", type=int, default=None, help="cap on evaluation examples (items, warm)")
    p.add_argument("--cache", default="runs/bench-cache", help="pretrained models + per-seed records")
    p.add_argument("--fresh", action="store_true", help="ignore cached per-seed records")
    p.add_argument("--pretrain-only", action="store_true", help="only pretrain (and cache) the models")
    p.add_argument("--aggregate-only", action="store_true",
                   help="only summarise the cached per-seed records that exist (runs nothing)")
    p.add_argument("--out", default=None, help="results name (default fewshot / fewshot-quick)")
    args = p.parse_args(argv)
    if args.pretrain_seconds == 0:
        args.pretrain_seconds = None
    if args.quick:
        args.seeds = args.seeds[:1] if args.seeds != [0, 1, 2] else [0]
        args.ks = [k for k in args.ks if k in (1, 5)] or [1]
        args.max_eval = args.max_eval or 300
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    records = []
    tag = "quick" if args.quick else f"e{args.pretrain_epochs}"
    if args.pretrain_only:
        from fsrec_serve.data import SplitConfig, load_dataset, make_splits

        for ds in args.datasets:
            data = load_dataset(ds, args.data_dir)
            for seed in args.seeds:
                _, info = pretrained_model(ds, make_splits(data, SplitConfig(seed=seed)), seed, args, log)
                log(f"{ds} seed {seed}: best epoch {info.get('best_epoch')} valid {info.get('best_valid')}")
        return 0
    for ds in args.datasets:
        for seed in args.seeds:
            path = Path(args.cache) / f"fewshot-{ds}-s{seed}-{tag}.json"
            if path.exists() and not args.fresh:
                log(f"{ds} seed {seed}: cached record {path}")
                records.append(json.loads(path.read_text()))
                continue
            if args.aggregate_only:
                log(f"{ds} seed {seed}: no record, skipped")
                continue
            log(f"{ds} seed {seed}")
            partial = path.with_suffix(".partial.json")
            rec = run_seed(ds, seed, args, log, partial)
            path.write_text(json.dumps(rec, indent=1, default=float) + "\n")
            partial.unlink(missing_ok=True)
            records.append(rec)
    rows, details = aggregate(records)
    name = args.out or ("fewshot-quick" if args.quick else "fewshot")
    # the command that reproduces the numbers (--aggregate-only only re-reads the cached records)
    command = "python -m bench.fewshot " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:]) if a != "--aggregate-only")
    out = write_results(name, command, rows, extra={
        "notes": NOTES,
        "details": details,
        "pretrain": [{"dataset": r["dataset"], "seed": r["seed"], **r["pretrain"]} for r in records],
        "splits": [r["split"] for r in records],
        "wall_seconds": time.time() - t0,
    })
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
