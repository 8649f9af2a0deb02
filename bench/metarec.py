"""RecBole-MetaRec cold-start protocol on ML-100K, 10 random splits (see
fsrec_serve/experiments/metarec.py for the protocol and the metric definitions).

Per split: users with 13..100 ratings split 8:1:1 (train / validation / test users); our model is
pretrained on the TRAINING users' sequences only (rating head on, rating loss weight 1.0; early
stopping on the training users' last item); validation and test users are never trained on.
A test user's support (all but 10 random interactions) is the history; the 10 query items are
ranked by

* ``item-mean``: the item's mean rating over the training users (the baseline of the issue);
* ``fsrec-rating-head``: the model's predicted rating of the item given the support history;
* ``item-knn``: item-based CF from the test user's support ratings (similarities from the
  training users), a classic non-neural baseline;
* ``knn-blend``: item mean + item-knn (no neural model), weights tuned on the validation users;
* ``fsrec-blend``: per-user standardised rating head + shrunk item mean + next-item logit, with
  blend weights and the item-mean shrinkage chosen on the VALIDATION users of the split;
* ``fsrec-knn-blend``: fsrec-blend + item-knn (what the model adds on top of the CF baseline);
* ``feature-head``: a linear rating head on support features (shrunk item mean, item-kNN and
  MF deviations from the support, genre affinity, log count), fitted on simulated tasks of the
  training users (random 10-item query, the rest = support);
* ``feature-head-per-user``: that head adapted per user on their own support (closed-form ridge
  towards the global head on leave-one-out support features; strength chosen on the VALIDATION
  users of the split). ``--no-neural`` runs only these and the baselines (no pretraining);
* ``fsrec-adapted-blend`` (unless --no-adapt): as fsrec-blend, with the rating head first adapted
  (head_only: output bias + rating head) on the test users' SUPPORT ratings (cohort adaptation).

* ``fsrec-peruser-blend`` (unless --no-peruser; the registered method of goal 18.4): the base +
  per-user fits on each user's support (next-item offsets ``fit_user_params`` and rating-head
  offsets ``fit_rating_offsets``) in the fsrec-blend recipe, everything chosen on the VALIDATION
  users (see ``peruser_blend``); ``relative_gain`` rows: it over item-mean, fsrec-blend,
  feature-head-per-user and knn-blend, two-level bootstrap (splits, then test users).

Results: bench/results/metarec.json (--no-neural), metarec-r18.json (the full run, 12 CPU-minutes
at one thread); mean ± std over the splits.

    python -m bench.metarec --splits 10 --num-threads 1 --cache runs/metarec-r18 --out metarec-r18

    python -m bench.metarec --splits 10
    python -m bench.metarec --quick              # 1 split, tiny model (a smoke run)
    python -m bench.metarec --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Pp]osition ids.*")
PUBLISHED = {"melu": 0.5331, "mamo": 0.5929, "tanp": 0.5994}
METRICS = ("ndcg@5", "precision@5", "mrr@5", "graded_ndcg@5", "rmse")
SHRINKAGE_GRID = (0.0, 2.0, 5.0, 10.0, 20.0)
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
RATING_L2_GRID = (0.01, 0.1, 1.0, float("inf"))  # per-user rating fit strength (inf = none)
REGISTERED = "fsrec-peruser-blend"  # the transformer-based method of goal 18.4 (registered before its run)


def pretrained(sp, seed: int, args, log):
    from fsrec_serve.data import Example, UserSequence
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import default_model_config, default_train_config, pretrain

    tag = "quick" if args.quick else f"L{args.max_seq_len}-e{args.pretrain_epochs}"
    out = Path(args.cache) / f"metarec-s{seed}-{tag}"
    if (out / "model.safetensors").exists() and (out / "fsrec_run.json").exists():  # finished runs only
        log(f"  cached model {out}")
        return FsRecModel.from_pretrained(str(out)).eval()
    train = sp.train_sequences()
    seqs = [UserSequence(s.user, s.items[:-1], s.ratings[:-1]) for s in train]
    valid = [Example(s.user, s.items[:-1], s.items[-1], s.ratings[-1], s.ratings[:-1]) for s in train]
    mo = dict(max_seq_len=args.max_seq_len, rating_head=True, rating_loss_weight=1.0)
    to = dict(seed=seed, device=args.device, num_threads=args.num_threads, progress=False,
              max_train_seconds=args.pretrain_seconds, output_dir=str(out), epochs=args.pretrain_epochs)
    if args.quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
        to.update(epochs=2, patience=0, max_train_seconds=None)
    mc = default_model_config(sp.splits, "cloze", **mo)
    tc = default_train_config(sp.splits, "cloze", **to)
    log(f"  pretraining on {len(seqs)} training users -> {out}")
    return pretrain(sp.splits, mc, tc, train_sequences=seqs, valid_examples=valid).model.eval()


def run_split(data, seed: int, args, log) -> dict:
    import torch

    from fsrec_serve.experiments.metarec import (MetaRecConfig, evaluate_metarec, make_metarec_split,
                                                 simulated_tasks)
    from fsrec_serve.experiments.metarec_scorers import (BlendScorer, ItemKNNScorer, ItemMeanScorer,
                                                         ModelNextItemScorer, ModelRatingScorer, PerUserHeadScorer,
                                                         SupportFeatures, fit_global_head, select_per_user_lambda,
                                                         tune_blend)

    torch.set_num_threads(args.num_threads)
    sp = make_metarec_split(data, MetaRecConfig(seed=seed))
    train = sp.train_sequences()
    item_mean = ItemMeanScorer(train, sp.num_items)
    out = {"seed": seed, "n_train": len(sp.train_users), "n_valid": len(sp.valid_users),
           "n_test": len(sp.test_users), "methods": {}}
    out["methods"]["item-mean"] = evaluate_metarec(item_mean, sp.test_tasks, per_task=True)
    knn = ItemKNNScorer(train, sp.num_items)
    out["methods"]["item-knn"] = evaluate_metarec(knn, sp.test_tasks, per_task=True)

    # rating head on support features: global (fitted on simulated training tasks) and adapted
    # per user on their support, the adaptation strength chosen on the validation users
    c0 = time.process_time()
    feats = SupportFeatures(train, sp.num_items, sp.splits.item_features, seed=seed)
    w = fit_global_head(feats, simulated_tasks(train, seed=seed))
    fit_cpu = time.process_time() - c0
    lam, lam_scores = select_per_user_lambda(feats, w, sp.valid_tasks)
    out["methods"]["feature-head"] = evaluate_metarec(PerUserHeadScorer(feats, w, float("inf")), sp.test_tasks,
                                                      per_task=True)
    c1 = time.process_time()
    res = evaluate_metarec(PerUserHeadScorer(feats, w, lam), sp.test_tasks, per_task=True)
    res.update(lam=lam, valid_ndcg5=lam_scores[lam], valid_by_lam={str(k): v for k, v in lam_scores.items()},
               global_weights=dict(zip(feats.names, w.tolist())), fit_cpu_seconds=fit_cpu,
               adapt_cpu_seconds=time.process_time() - c1)
    out["methods"]["feature-head-per-user"] = res
    if args.no_neural:
        log("  " + ", ".join(f"{m} {v['ndcg@5']:.4f}" for m, v in out["methods"].items()))
        return out
    model = pretrained(sp, seed, args, log)
    rh = ModelRatingScorer(model)
    ni = ModelNextItemScorer(model)
    out["methods"]["fsrec-rating-head"] = evaluate_metarec(rh, sp.test_tasks, per_task=True)

    def blend_for(comps: dict, tag: str | None, rating_scorer=None) -> dict:
        """Tune the weights (item mean fixed at 1) and the item-mean shrinkage on the VALIDATION
        users, then score the test users once (recorded as ``tag`` unless None)."""
        best = None
        for shrink in SHRINKAGE_GRID:
            c = dict(comps, item_mean=ItemMeanScorer(train, sp.num_items, shrinkage=shrink))
            w, score, _ = tune_blend(c, sp.valid_tasks, grid=WEIGHT_GRID, anchor="item_mean")
            if best is None or score > best[2] + 1e-12:
                best = (shrink, w, score, c)
        shrink, w, vscore, c = best
        res = evaluate_metarec(BlendScorer(c, w), sp.test_tasks, per_task=True, rating_scorer=rating_scorer)
        res.update(valid_ndcg5=vscore, weights=w, shrinkage=shrink)
        if tag is not None:
            out["methods"][tag] = res
        return res

    blend_for({"item_knn": knn}, "knn-blend", rating_scorer=knn)
    fb = blend_for({"rating_head": rh, "next_item": ni}, "fsrec-blend", rating_scorer=rh)
    blend_for({"rating_head": rh, "next_item": ni, "item_knn": knn}, "fsrec-knn-blend", rating_scorer=rh)
    if not args.no_peruser:
        peruser_blend(model, sp, blend_for, out, seed, args, log)
    if not args.no_adapt:
        from fsrec_serve.adaptation import AdaptConfig, adapt
        from fsrec_serve.data import UserSequence

        support = [UserSequence(t.user, t.support_items, t.support_ratings) for t in sp.test_tasks]
        t0 = time.perf_counter()
        cfg = AdaptConfig(seed=seed, device=args.device, num_threads=args.num_threads,
                          train_rating_head=True, **({"epochs": 2} if args.quick else {}))
        res = adapt(model, support, "head_only", cfg)
        secs = time.perf_counter() - t0
        arh = ModelRatingScorer(res.model)
        out["methods"]["fsrec-adapted-rating-head"] = evaluate_metarec(arh, sp.test_tasks, per_task=True)
        # the blend weights of the unadapted model are reused (validation users are not adapted on)
        im = ItemMeanScorer(train, sp.num_items, shrinkage=fb["shrinkage"])
        r2 = evaluate_metarec(BlendScorer({"rating_head": arh, "item_mean": im,
                                           "next_item": ModelNextItemScorer(res.model)}, fb["weights"]),
                              sp.test_tasks, per_task=True, rating_scorer=arh)
        r2["seconds"] = secs
        out["methods"]["fsrec-adapted-blend"] = r2
    log("  " + ", ".join(f"{m} {v['ndcg@5']:.4f}" for m, v in out["methods"].items()))
    return out


def peruser_blend(model, sp, blend_for, out: dict, seed: int, args, log) -> None:
    """``fsrec-peruser-blend``: the pretrained base + per-user fits on each user's SUPPORT only,
    in the fsrec-blend recipe (item mean + rating head + next-item logits, per-user z-scored):

    * next-item logits with the library's per-user fit (``fit_user_params``: one user-state
      offset per user by next-item cross-entropy over the support prefixes; lr / steps chosen on
      the supports' inner check, keep-or-zero rule per user: a user whose held-out support item
      does not improve is served zero-shot);
    * the rating head with a per-user rating fit (``fit_rating_offsets``: one user-state offset
      per user by squared error on the support ratings, strength ``l2``).

    Validation and test users are fitted in the same calls (supports only, the query is never
    read). Chosen on the VALIDATION users: ``l2`` of the rating fit (RATING_L2_GRID; inf = no
    rating offset), the blend weights and the item-mean shrinkage."""
    from fsrec_serve.adaptation import PerUserConfig, fit_user_params
    from fsrec_serve.data import UserSequence
    from fsrec_serve.experiments.metarec_scorers import ModelNextItemScorer as NextItem
    from fsrec_serve.experiments.metarec_scorers import ModelRatingScorer as Rating
    from fsrec_serve.experiments.metarec_scorers import fit_rating_offsets

    tasks = list(sp.valid_tasks) + list(sp.test_tasks)
    support = [UserSequence(t.user, t.support_items, t.support_ratings) for t in tasks]
    t0, c0 = time.perf_counter(), time.process_time()
    pu = fit_user_params(model, support, PerUserConfig(seed=seed))
    ni = NextItem(model, user_params=pu)
    fits = {l2: (fit_rating_offsets(model, tasks, l2) if math.isfinite(l2) else None) for l2 in RATING_L2_GRID}
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    best = None
    for l2, ro in fits.items():
        rh = Rating(model, user_params=ro)
        res = blend_for({"rating_head": rh, "next_item": ni}, None, rating_scorer=rh)
        if best is None or res["valid_ndcg5"] > best["valid_ndcg5"] + 1e-12:
            best = dict(res, rating_l2=l2 if math.isfinite(l2) else "inf")
    test = {t.user for t in sp.test_tasks}
    best.update(seconds=secs, cpu_seconds=cpu, cpu_ms_per_user=1000.0 * cpu / max(1, len(tasks)),
                next_item_n_adapted_test=int(sum(a for u, a in zip(pu.users, pu.adapted) if u in test)),
                next_item_lr=pu.info.get("lr"), next_item_steps=pu.info.get("steps"),
                next_item_inner_ndcg=pu.info.get("inner_ndcg"),
                next_item_inner_zero_shot_ndcg=pu.info.get("inner_zero_shot_ndcg"))
    out["methods"]["fsrec-peruser-blend"] = best


def paired_gain_rows(recs: list, method: str, baselines: tuple, n_boot: int = 2000) -> list:
    """``method`` ÷ each baseline - 1 (mean nDCG@5 over every split's test users) with a 95 %
    two-level bootstrap CI (splits, then test users within them; pairs kept together)."""
    from fsrec_serve.experiments.kshot import two_level_gain

    rows = []
    for b in baselines:
        have = [r for r in recs if "per_task_ndcg@5" in r["methods"].get(method, {})
                and "per_task_ndcg@5" in r["methods"].get(b, {})]
        if not have:
            continue
        g = two_level_gain([r["methods"][b]["per_task_ndcg@5"] for r in have],
                           [r["methods"][method]["per_task_ndcg@5"] for r in have], n_boot=n_boot)
        rows.append({"dataset": "ml-100k", "protocol": "metarec", "method": method, "metric": "relative_gain",
                     "baseline": b, **g})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", type=int, default=10, help="number of random splits (seeds 0..n-1)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="explicit split seeds")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 2)))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-seq-len", type=int, default=50)
    p.add_argument("--pretrain-epochs", type=int, default=60, help="pretraining epochs per split")
    p.add_argument("--pretrain-seconds", type=float, default=0.0, help="wall-clock budget per split; 0 = none")
    p.add_argument("--no-adapt", action="store_true", help="skip the adapted rating head")
    p.add_argument("--no-peruser", action="store_true", help="skip fsrec-peruser-blend (the per-user fit)")
    p.add_argument("--no-neural", action="store_true",
                   help="skip the transformer (no pretraining): baselines + the per-user feature head")
    p.add_argument("--cache", default="runs/bench-cache")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.pretrain_seconds == 0:
        args.pretrain_seconds = None
    seeds = args.seeds if args.seeds is not None else list(range(1 if args.quick else args.splits))
    from fsrec_serve.data import load_dataset

    data = load_dataset("ml-100k", args.data_dir)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    recs = []
    tag = "quick" if args.quick else ("noneural" if args.no_neural else f"L{args.max_seq_len}-e{args.pretrain_epochs}")
    for seed in seeds:
        path = Path(args.cache) / f"metarec-s{seed}-{tag}.json"
        if path.exists() and not args.fresh:
            recs.append(json.loads(path.read_text()))
            log(f"split {seed}: cached")
            continue
        log(f"split {seed}")
        rec = run_split(data, seed, args, log)
        path.write_text(json.dumps(rec, indent=1, default=float) + "\n")
        recs.append(rec)
    rows = []
    methods = list(dict.fromkeys(m for r in recs for m in r["methods"]))
    for m in methods:
        for met in METRICS:
            vals = [r["methods"][m][met] for r in recs if met in r["methods"].get(m, {})]
            if vals:
                rows.append(summarize(vals, dataset="ml-100k", protocol="metarec", method=m, metric=met))
    rows += paired_gain_rows(recs, REGISTERED, ("item-mean", "fsrec-blend", "feature-head-per-user", "knn-blend"))
    name = args.out or ("metarec-quick" if args.quick else "metarec")
    command = "python -m bench.metarec " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = write_results(name, command, rows, extra={
        "notes": [
            "RecBole-MetaRec protocol: users with 13..100 ratings split 8:1:1 at random (58 test "
            "users per split), 10 random query interactions per test user, the others = support; "
            "positives = the 5 query items with the highest true ratings (torch.topk, as "
            "RecBole-MetaRec); mean ± std over splits.",
            "Published (same protocol, nDCG@5): MeLU 0.5331, MAMO 0.5929, TaNP 0.5994; goal 0.66.",
        ],
        "test_users_per_split": [r["n_test"] for r in recs],
        "published_ndcg@5": PUBLISHED,
        "goal_ndcg@5": 0.66,
        "blend_weights": [{"seed": r["seed"], **{m: {k: r["methods"][m].get(k) for k in ("weights", "shrinkage", "valid_ndcg5")}
                                                  for m in r["methods"] if "blend" in m}} for r in recs],
        "ties": "positives = torch.topk(true ratings of the query in random draw order, 5), as "
                "RecBole-MetaRec's MetaCollector",
        "wall_seconds": time.time() - t0,
    })
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
