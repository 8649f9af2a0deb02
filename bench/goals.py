"""The goals of the open issues, declared once; BENCHMARKS.md's goals table is computed from them.

A :class:`Goal` names the results files that may back it (preferred first), the rows it reads
(data set, protocol, candidate methods) and its :class:`Check` s; ``bench/goal_check.py`` says
how a goal is met, missed or not run yet. Also declared here: which results files are superseded (kept in JSON, not
shown in the protocol tables) and the known causes of broken-looking numbers.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Optional

from bench.goal_check import (  # noqa: F401  (re-exported: render and tests read them here)
    CONDITION_KEYS, OPS, Check, Goal, GoalResult, condition, evaluate_goal,
)


def superseded(stem: str, protocol: str = "") -> Optional[str]:
    """Why the rows of ``stem`` (for ``protocol``) are superseded, or None."""
    return SUPERSEDED.get(stem) or SUPERSEDED.get(f"{stem}:{protocol}")


def _c(metric, op, threshold, **kw) -> Check:
    return Check(metric, op, threshold, **kw)


ADAPTED = ("per-user", "cohort+per-user", "auto")
GOALS: list[Goal] = [
    # -- issue 10: few-shot adaptation -----------------------------------------------------------
    Goal("10.1", "k=5 cold users, ML-100K: best of per-user / cohort+per-user / auto gains >= 10 % "
         "over zero-shot, CI low >= 3 %", ("fewshot",), "coldstart-k5", ADAPTED,
         (_c("relative_gain", ">=", 0.10), _c("relative_gain", ">=", 0.03, field="ci_low")),
         dataset="ml-100k"),
    Goal("10.1", "ML-100K k=5 gain measured on >= 800 distinct cold users", ("fewshot",),
         "coldstart-k5", ADAPTED, (_c("relative_gain", ">=", 800, field="n_users"),), dataset="ml-100k"),
    Goal("10.1", "k=5 cold users, Beauty (reported beside ML-100K), >= 2,000 users", ("fewshot",),
         "coldstart-k5", ADAPTED, (_c("relative_gain", ">=", 2000, field="n_users"),), dataset="beauty"),
    # judged on the registered 3-round run (arrivals-r3; the 6-round arrivals.json was picked after
    # its numbers were seen and is only shown beside) and with its CI: gap_closed's denominator
    # (retrain - stale) is near 0, 42 % of its resamples are undefined, the CI spans 0. Updating is
    # measured by the prequential replay (issue 17), whose retrain does see the arriving users.
    Goal("10.2", "users arriving after training, k=5: adaptation closes >= 50 % of the stale -> "
         "retrain gap (95 % CI low > 0) at <= 5 % of the retrain's CPU seconds (registered 3-round run)",
         ("arrivals-r3",), "arrivals-k5",
         ("*",), (_c("gap_closed", ">=", 0.5), _c("gap_closed", ">", 0.0, field="ci_low"),
                  _c("cpu_seconds", "<=", 0.05, over="retrain")),
         dataset="ml-100k"),
    Goal("10.3", "per-user fitting cost at k=5 on the 2-core CPU <= 5 ms per user (per-user-fast: one "
         "lr, 256-candidate softmax, measured on an idle machine; the lr-grid per-user rows were timed "
         "at load 8-15)", ("fewshot",),
         "coldstart-k5", ("per-user-fast", "per-user", "cohort+per-user"), (_c("ms_per_user", "<=", 5.0),)),
    Goal("10.4", "new items learnt without harm: warm users' NDCG@10 after / before >= 0.98 and "
         "new-item NDCG@10 >= 0.15, by the same method", ("items", "fewshot", "fewshot-h200*"),
         "coldstart-items", ("item-embeddings*",), (_c("ratio", ">=", 0.98), _c("ndcg@10", ">=", 0.15))),
    Goal("10.5", "MetaRec protocol nDCG@5 >= 0.66 (mean of 10 splits)", ("metarec", "metarec-h200"),
         "metarec", ("fsrec-*", "*per-user*"), (_c("ndcg@5", ">=", 0.66),), dataset="ml-100k"),
    Goal("10.6", "converged Beauty base: all-user leave-one-out NDCG@10 >= 0.062 over 3 seeds",
         ("quality-beauty", "quality"), "loo-full", ("fsrec-sasrec", "fsrec-bert4rec"),
         (_c("ndcg@10", ">=", 0.062), _c("ndcg@10", ">=", 3, field="n")), dataset="beauty"),
    # -- issue 11: own data ----------------------------------------------------------------------
    Goal("11", "reading a 20M-row log: every fsrec reader's peak memory <= 4096 MB", ("ingest",), "ingest",
         ("fsrec*",), (_c("peak_mb", "<=", 4096),), every=True),
    Goal("11", "reading the 20M-row CSV: fsrec's reader rows/s >= 1x pandas.read_csv of the same file "
         "(paired per round)", ("ingest",), "ingest", ("fsrec-csv",), (_c("ratio", ">=", 1.0),)),
    Goal("11", "reading the same log as Parquet: fsrec's reader rows/s >= 1x pandas.read_csv of the CSV",
         ("ingest",), "ingest", ("fsrec-parquet",), (_c("ratio", ">=", 1.0),)),
    # -- issue 12: serving speed -----------------------------------------------------------------
    Goal("12", "varlen ÷ padded Triton throughput >= 1.5x on ML-100K, p99 no worse",
         ("serving-varlen", "serving"), "serving", ("triton-cpu-varlen",),
         (_c("throughput_rps", ">=", 1.5, over="triton-cpu"), _c("p99_ms", "<=", 1.0, over="triton-cpu")),
         dataset="ml-100k"),
    Goal("12", "varlen ÷ padded Triton throughput >= 3x on Beauty, p99 no worse",
         ("serving-varlen", "serving"), "serving", ("triton-cpu-varlen",),
         (_c("throughput_rps", ">=", 3.0, over="triton-cpu"), _c("p99_ms", "<=", 1.0, over="triton-cpu")),
         dataset="beauty"),
    Goal("12", "Triton ÷ FastAPI + PyTorch throughput >= 5x at equal or lower p99",
         ("serving-fastapi", "serving-varlen", "serving"), "serving", ("triton-cpu*",),
         (_c("throughput_rps", ">=", 5.0, over="fastapi-torch"), _c("p99_ms", "<=", 1.0, over="fastapi-torch")),
         dataset="ml-100k", pair="peak"),
    Goal("12", "Triton ÷ in-process ONNX Runtime at the same batch >= 0.90",
         ("serving-varlen", "serving"), "serving", ("triton-cpu*/ort-inprocess*",),
         (_c("ratio", ">=", 0.90),), where={"basis": "throughput"}),
    Goal("12", "H200: >= 50,000 sequences/s through Triton", ("serving-gpu*",), "serving",
         ("triton-gpu-python",), (_c("throughput_rps", ">=", 50000),)),
    Goal("12", "H200: dynamic batching on ÷ off >= 10x at concurrency 256", ("serving-gpu*",), "serving",
         ("triton-gpu-python",), (_c("throughput_rps", ">=", 10.0, over="triton-gpu-python-dynbatch-off"),),
         where={"concurrency": 256}),
    Goal("12", "H200: Triton p99 < 10 ms at concurrency 64", ("serving-gpu*",), "serving",
         ("triton-gpu-python",), (_c("p99_ms", "<", 10.0),), where={"concurrency": 64}),
    Goal("12", "soak: no errors", ("soak",), "soak", ("*",), (_c("errors", "==", 0),)),
    Goal("12", "soak: resident memory growth after warm-up <= 5 %", ("soak",), "soak", ("*",),
         (_c("rss_growth", "<=", 0.05),)),
    # -- issue 17: the live loop, prequential replay (protocol: REPLAY_PROTOCOL) --------------------
    Goal("17", "replay: loop ÷ history NDCG@10 - 1 >= +10 % with 95 % CI low > 0 over >= 15,000 "
         "replayed events", ("replay",), "replay", ("loop",),
         (_c("relative_gain", ">=", 0.10), _c("relative_gain", ">", 0.0, field="ci_low"),
          _c("relative_gain", ">=", 15000, field="n_events")), dataset="ml-100k", where={"users": "all"}),
    Goal("17", "replay: loop ÷ retrain NDCG@10 >= 1.0 at <= 5 % of retrain's learning CPU-seconds",
         ("replay",), "replay", ("loop",), (_c("retrain_ratio", ">=", 1.0), _c("compute_ratio", "<=", 0.05)),
         dataset="ml-100k", where={"users": "all"}),
    # -- issue 17: the live loop through the real stack (bench/live.py, registered before its run):
    #    one run of `python -m bench.live` on the shared 2-core machine is the main result
    Goal("17", "freshness p99 <= 1 s, event sent -> its user's parameters live, at 200 events/s sustained, "
         "embedded SQLite store, this 2-core machine", ("replay-live",), "freshness", ("loop-sqlite",),
         (_c("p99_s", "<=", 1.0), _c("p99_s", ">=", 195.0, field="events_per_s")), dataset="ml-100k"),
    Goal("17", "serving by user id ÷ by item ids, throughput at concurrency 16 >= 0.8", ("replay-live",),
         "serving-by-user", ("by-user",), (_c("throughput_ratio", ">=", 0.8),), dataset="ml-100k"),
    Goal("17", "kill -9 of learner / tritonserver / redis-server during a replay: 0 events lost, 0 applied "
         "twice, 0 answers with parameters of another model", ("replay-live",), "faults", ("loop-redis",),
         (_c("events_lost", "==", 0), _c("events_doubled", "==", 0), _c("stale_answers", "==", 0)),
         dataset="ml-100k"),
    # -- issue 17, second live-stack protocol, registered before its run (after the first run, whose
    #    freshness tail had an orphan learner of a crashed smoke run on the CPU and whose kills fell
    #    between requests): kills while requests are in flight, a rollout of a second version with
    #    the learner restarted on it, the learner's prefix-state cache. Shown beside the first run.
    Goal("17", "r2: freshness p99 <= 1 s at 200 events/s sustained, embedded store, 2 cores", ("replay-live-r2",),
         "freshness", ("loop-sqlite",), (_c("p99_s", "<=", 1.0), _c("p99_s", ">=", 195.0, field="events_per_s")),
         dataset="ml-100k"),
    Goal("17", "r2: serving by user id ÷ by item ids, throughput at concurrency 16 >= 0.8", ("replay-live-r2",),
         "serving-by-user", ("by-user",), (_c("throughput_ratio", ">=", 0.8),), dataset="ml-100k"),
    Goal("17", "r2: kills in flight + a rollout: 0 events lost, 0 applied twice, 0 stale-fingerprint answers",
         ("replay-live-r2",), "faults", ("loop-redis",),
         (_c("events_lost", "==", 0), _c("events_doubled", "==", 0), _c("stale_answers", "==", 0)),
         dataset="ml-100k"),
    # -- issue 17, fifth live-stack protocol, registered before its run: freshness over 120 s (past
    #    the point where windows fill: the plateau of the fit cost), the learner's per-user fit with
    #    one step checkpoint (10 steps instead of 10/25: ~2.4x cheaper refits). What that costs in
    #    replay quality is NOT measured by this run
    Goal("17", "r5: freshness p99 <= 1 s at 200 events/s over 120 s, per-user fit 10 steps", ("replay-live-r5",),
         "freshness", ("loop-sqlite",), (_c("p99_s", "<=", 1.0), _c("p99_s", ">=", 195.0, field="events_per_s")),
         dataset="ml-100k"),
    # -- issue 17, sixth live-stack protocol, registered before its run: r5's settings with the
    #    learner's context="history" (the newest 20 items are targets, each with its full prefix:
    #    prefixes stay put, so the state cache keeps hitting after histories pass the window).
    #    Replay quality of this context is NOT measured by this run
    Goal("17", "r6: freshness p99 <= 1 s at 200 events/s over 120 s, 10-step fit, full-prefix context",
         ("replay-live-r6",), "freshness", ("loop-sqlite",),
         (_c("p99_s", "<=", 1.0), _c("p99_s", ">=", 195.0, field="events_per_s")), dataset="ml-100k"),
    # -- issue 17, third faults protocol, registered before its run: r2's checker never met an
    #    answer with parameters (2,000 events over ~940 users: too few per user to fit), so r3
    #    replays 2,000 events of 40 users (~50 each) under the same kills and rollout
    Goal("17", "r3: kills in flight + a rollout, 40 users: 0 events lost, 0 applied twice, 0 stale-fingerprint "
         "answers with >= 20 answers with parameters checked", ("replay-live-r3",), "faults", ("loop-redis",),
         (_c("events_lost", "==", 0), _c("events_doubled", "==", 0), _c("stale_answers", "==", 0),
          _c("stale_answers", ">=", 20, field="personal_answers_checked")), dataset="ml-100k"),
    # -- issue 17, fourth faults protocol, registered before its run: r3 sent its 2,000 events in
    #    seconds (unpaced), so its checker met 2 answers with parameters; r4 paces 50 events/s
    #    (~40 s, the learner fits meanwhile) and asks for a random active user every 50 ms
    Goal("17", "r4: paced kills in flight + a rollout, 40 users: 0 events lost, 0 applied twice, 0 "
         "stale-fingerprint answers with >= 20 answers with parameters checked", ("replay-live-r4",), "faults",
         ("loop-redis",), (_c("events_lost", "==", 0), _c("events_doubled", "==", 0), _c("stale_answers", "==", 0),
                           _c("stale_answers", ">=", 20, field="personal_answers_checked")), dataset="ml-100k"),
    # -- issue 18: a strong base, honest k-shot baselines -----------------------------------------
    # registered before their main runs: quality-beauty-r18 is the shipped default (the library's
    # recommended settings, no overrides) over 3 seeds; the ablation rows (quality-beauty-ablation,
    # fsrec-sasrec-<change>) are 1-seed rows beside it, not goals; plain-sasrec is the independent
    # reference recipe (bench/plain_sasrec.py) run under the same protocol.
    Goal("18.1", "Beauty LOO full-ranking NDCG@10 >= 0.062 with the shipped default, 3 seeds, "
         "<= 30 min per seed on 2 cores", ("quality-beauty-r18",), "loo-full", ("fsrec-sasrec",),
         (_c("ndcg@10", ">=", 0.062), _c("ndcg@10", ">=", 3, field="n"), _c("seconds", "<=", 1800)),
         dataset="beauty"),
    Goal("18.1", "the shipped default >= the plain SASRec recipe on Beauty (same protocol)",
         ("quality-beauty-r18",), "loo-full", ("fsrec-sasrec",),
         (_c("ndcg@10", ">=", 1.0, over="plain-sasrec"),), dataset="beauty"),
    # post-hoc (declared after the ablation rows, before its run): the default changed to
    #   bucket_by_length=False, chosen on the ablation's VALIDATION NDCG@10 (0.0746 vs 0.0695);
    #   reported beside the registered quality-beauty-r18, never instead of it
    Goal("18.1", "post-hoc: Beauty NDCG@10 >= 0.062 with the default after the ablation (length buckets off), "
         "3 seeds, <= 30 min per seed", ("quality-beauty-r18b",), "loo-full", ("fsrec-sasrec",),
         (_c("ndcg@10", ">=", 0.062), _c("ndcg@10", ">=", 3, field="n"), _c("seconds", "<=", 1800)),
         dataset="beauty"),
    Goal("18.2", "a log read with `fsrec train --data LOG --format sequences` and no other flag "
         "(Beauty as an unknown log), <= 25 min on 2 cores: NDCG@10 >= the plain recipe on it",
         ("train-default",), "loo-full", ("fsrec-train-default",),
         (_c("ndcg@10", ">=", 1.0, over="plain-sasrec"), _c("seconds", "<=", 1500))),
    # -- issue 18.3: the honest k-shot protocol (bench/fewshot_r18.py), registered before its main run:
    #    5 user folds of ML-100K (every user with >= 11 interactions is a cold user once), fold bases
    #    with the full causal recipe, with and without prefix windows; every hyperparameter (which
    #    base, head-only's lr, the per-user lr/steps) chosen on inner users (warm users whose first
    #    11 items were left out of pretraining), never on a cold user's query. The registered method
    #    for every k is cohort+per-user (head-only+warm cohort adapter, then per-user offsets); its
    #    relative_gain row is taken against the strongest non-adaptive baseline ON TEST (field
    #    baseline; first-k-popularity, popularity, zero-shot, zero-shot-prefix), two-level bootstrap
    #    (fold bases, then users within them)
    Goal("18.3", "honest k-shot, k=5 cold users, ML-100K: cohort+per-user ÷ the strongest non-adaptive baseline (incl. "
         "first-k-popularity and the prefix-trained base) - 1 >= +5 %, CI low > 0, >= 800 users",
         ("fewshot-r18",), "coldstart-k5", ("cohort+per-user",),
         (_c("relative_gain", ">=", 0.05), _c("relative_gain", ">", 0.0, field="ci_low"),
          _c("relative_gain", ">=", 800, field="n_users")), dataset="ml-100k"),
    # -- issue 18.4, registered before their main runs --------------------------------------------
    #    MetaRec with the transformer (bench/metarec.py, metarec-r18): RecBole-MetaRec protocol on
    #    ML-100K, 10 random user splits (seeds 0..9); per split a base pretrained on the training
    #    users only (the script's defaults: cloze, rating head, history window 50, <= 60 epochs,
    #    early stopping on the training users' last item, 1 thread); the registered method is
    #    fsrec-peruser-blend: that base + per-user fits on each validation / test user's SUPPORT
    #    (the library's next-item user-state offsets, fit_user_params, and a user-state offset of
    #    the rating head fitted on the support ratings), blended with the shrunk item mean; the
    #    rating fit's strength, the blend weights and the shrinkage chosen on the VALIDATION users,
    #    test users scored once. relative_gain rows: two-level bootstrap (splits, then test users)
    Goal("18.4", "MetaRec with the transformer, ML-100K (base + per-user fit on the support): "
         "nDCG@5 >= 0.66, mean of 10 splits", ("metarec-r18",), "metarec", ("fsrec-peruser-blend",),
         (_c("ndcg@5", ">=", 0.66), _c("ndcg@5", ">=", 10, field="n")), dataset="ml-100k"),
    #    New items with a CI (bench/items.py --cold-item-frac 0.15, items-r18): ML-100K seed 0, the
    #    newest 15 % of the catalogue held out of pretraining (the newest 5 % give only 95 events);
    #    per new item its first 3 warm-user interactions adapt, the later ones are the evaluation
    #    events; item-embeddings (replay + bias calibration on the warm users' VALIDATION item) is
    #    the registered method; new-item NDCG@10 with a 95 % bootstrap CI over the events (and one
    #    over items, then events, beside it); warm ratio with its CI over warm users
    Goal("18.4", "new items, ML-100K (newest 15 % held out): new-item NDCG@10 >= 0.15 on >= 300 evaluation "
         "events (95 % CI) with warm users' NDCG@10 after / before >= 0.98, by the same method",
         ("items-r18",), "coldstart-items", ("item-embeddings",),
         (_c("ndcg@10", ">=", 0.15), _c("ndcg@10", ">=", 300, field="n_events"), _c("ratio", ">=", 0.98)),
         dataset="ml-100k"),
    # -- issue 20: serving cost per sequence (bench/serving_cost.py), registered before its main run:
    #    server CPU (utime+stime of tritonserver + its python-backend stubs, from /proc) per served
    #    sequence, perf_analyzer as the load, concurrency 16; every data set of the run must meet it
    Goal("20.1", "Triton cpu (real-length) ÷ in-process ONNX Runtime (batch 16), server CPU per sequence at "
         "concurrency 16 <= 1.25", ("serving-cost",), "serving", ("triton-cpu-varlen",),
         (_c("cpu_ms_per_seq", "<=", 1.25, over="ort-inprocess"),), where={"concurrency": 16}, every=True),
    Goal("20.1", "real-length ÷ padded Triton, server CPU per sequence, same traffic, ML-100K <= 0.67",
         ("serving-cost",), "serving", ("triton-cpu-varlen",),
         (_c("cpu_ms_per_seq", "<=", 0.67, over="triton-cpu"),), dataset="ml-100k", where={"concurrency": 16}),
    Goal("20.1", "real-length ÷ padded Triton, server CPU per sequence, same traffic, Beauty <= 0.33",
         ("serving-cost",), "serving", ("triton-cpu-varlen",),
         (_c("cpu_ms_per_seq", "<=", 0.33, over="triton-cpu"),), dataset="beauty", where={"concurrency": 16}),
    Goal("20.1", "Triton cpu (real-length) ÷ FastAPI + PyTorch, server CPU per sequence at concurrency 16 <= 0.2",
         ("serving-cost",), "serving", ("triton-cpu-varlen",),
         (_c("cpu_ms_per_seq", "<=", 0.2, over="fastapi-torch"),), where={"concurrency": 16}, every=True),
    # -- issue 19: robustness (registered before bench.robust's main run; eps chosen on the
    #    validation item only, one pretraining seed, CIs over users) --------------------------------
    Goal("19.3", "adversarial vs plain under 20 % noisy histories: NDCG@10 >= +5 % (CI low > 0)",
         ("robust",), "robust-noise20", ("adversarial",),
         (_c("relative_gain", ">=", 0.05), _c("relative_gain", ">", 0.0, field="ci_low")), dataset="ml-100k"),
    Goal("19.3", "adversarial vs plain on clean histories: NDCG@10 >= 0.99x plain", ("robust",),
         "robust-clean", ("adversarial",), (_c("ndcg@10", ">=", 0.99, over="plain"),), dataset="ml-100k"),
    Goal("19.3", "1 %-of-users poisoning: the adversarial model's target HR@10 lift <= half the plain "
         "model's", ("robust",), "poisoning", ("adversarial",), (_c("lift", "<=", 0.5, over="plain"),),
         dataset="ml-100k"),
    # -- issue 19.2: ensembles (bench/ensemble.py), registered before its main run: ML-100K LOO over
    #    every user, full ranking; members = the shipped default recipe with seeds 0, 1, 2; the
    #    ensemble (mean-logprob) against the best member chosen on the validation item, paired
    #    bootstrap over users; serving cost = server CPU per sequence at concurrency 16, ensemble ÷
    #    the best member alone, same traffic, one tritonserver
    Goal("19.2", "ensemble NDCG@10 ÷ best member (chosen on validation) - 1 >= +3 %, CI low > 0",
         ("ensemble",), "ensemble", ("ensemble",),
         (_c("relative_gain", ">=", 0.03), _c("relative_gain", ">", 0.0, field="ci_low")), dataset="ml-100k"),
    Goal("19.2", "ensemble ÷ single model, server CPU per sequence at concurrency 16 <= 2x", ("ensemble",),
         "ensemble", ("ensemble",), (_c("cpu_ms_per_seq", "<=", 2.0, over="single"),), dataset="ml-100k",
         where={"concurrency": 16}),
    # -- issue 19.1: pruning (bench/pruning.py), registered before its main run: per data set the full
    #    trained model's FP32 ONNX export (`served`) against candidates built from it at export time:
    #    catalogue-<n> (top-n items by recency-weighted popularity), heads-<n>, ffn-<n> and their
    #    combinations (gradient importance, then a recovery fine-tune of <= 5 epochs early-stopped on
    #    validation). The judged method is `selected`: the candidate select_served_model picks on the
    #    VALIDATION item under the guard of quantized candidates (NDCG@10 drop <= 1 %, top-10 overlap
    #    >= 0.9, batch invariance; the fastest passing one if >= 1.05x faster at batch 64, 1 ORT
    #    thread; else `served` itself, ratio 1). Its test-item NDCG@10 loss (1 - selected / served)
    #    and ONNX Runtime CPU throughput ratio at batch 64 (1 thread, interleaved rounds, median) judge it
    Goal("19.1", "pruned ÷ served ONNX Runtime CPU throughput at batch 64 >= 1.5x with test NDCG@10 loss "
         "<= 1 %, ML-100K (the candidate the guard picks on validation)", ("pruning",), "pruning", ("selected",),
         (_c("throughput_ratio", ">=", 1.5), _c("ndcg_loss", "<=", 0.01)), dataset="ml-100k"),
    Goal("19.1", "pruned ÷ served ONNX Runtime CPU throughput at batch 64 >= 1.5x with test NDCG@10 loss "
         "<= 1 %, Beauty (the candidate the guard picks on validation)", ("pruning",), "pruning", ("selected",),
         (_c("throughput_ratio", ">=", 1.5), _c("ndcg_loss", "<=", 0.01)), dataset="beauty"),
    # -- earlier issues, still tracked -----------------------------------------------------------
    Goal("2", "ML-100K leave-one-out NDCG@10 >= 0.10 (3 seeds)", ("quality",), "loo-full",
         ("fsrec-*",), (_c("ndcg@10", ">=", 0.10),), dataset="ml-100k"),
    Goal("3", "continual re-fine-tuning keeps warm users (after / before) >= 0.98",
         ("fewshot", "fewshot-h200"), "forgetting", ("lora-replay", "full-noreplay"), (_c("ratio", ">=", 0.98),),
         dataset="ml-100k"),
    Goal("4", "ONNX FP32 export max |diff| vs PyTorch <= 1e-4", ("export",), "export", ("onnx-fp32",),
         (_c("max_abs_diff", "<=", 1e-4),)),
]

# Issue 17's replay protocol, fixed before the main run (fsrec_serve/experiments/replay.py): the
# main result is bench/results/replay.json from ``python -m bench.replay`` (all methods on every
# event after T); replay-quick.json (--max-events) is a smoke run and never backs a goal.
REPLAY_PROTOCOL = {
    "dataset": "ml-100k",
    "T": "0.8 quantile of event times; the model of T pretrained on events before T only "
         "(library default causal recipe, capped at 240 s wall-clock)",
    "events": "every event at or after T (20,001), time order; predict top-10 then record",
    "tick_s": 60,  # history+params / loop: params refit for users with new events (event time)
    "cadence_days": 7,  # loop refine and retrain cadence (event time)
    "methods": ("stale", "recent-popularity", "history", "history+params", "loop", "retrain"),
    "hyperparameters": "library defaults (PerUserConfig, RefineConfig, recommended ml-100k causal "
                       "config); nothing chosen on events after T",
    "main": "replay.json",
    # the same protocol through tritonserver + store + learner (bench/replay_stack.py): reported
    # beside the main result, never instead of it
    "beside": "replay-stack.json",
}

# Results kept in JSON but left out of the protocol tables (a newer run covers them), by file
# stem or "stem:protocol". They are shown, marked, only where nothing newer covers the data set
# and protocol. Files ending in "-quick" (smoke runs) are always left out.
SUPERSEDED: dict[str, str] = {
    "replay-live:faults": "kills between requests, no rollout; superseded by replay-live-r4.json (goals table keeps it)",
    "replay-live-r2:faults": "no answer with parameters met; superseded by replay-live-r4.json",
    "replay-live-r3:faults": "unpaced: 2 answers with parameters checked; superseded by replay-live-r4.json",
    "fewshot:coldstart-k1": "fold bases of 10 epochs on 50-item windows, head-only's lr picked partly on test "
                            "queries, zero-shot as the only baseline; superseded by fewshot-r18.json",
    "fewshot:coldstart-k3": "see fewshot:coldstart-k1; superseded by fewshot-r18.json",
    "fewshot:coldstart-k5": "see fewshot:coldstart-k1; superseded by fewshot-r18.json (goals 10.1/10.3 keep it)",
    "fewshot:coldstart-k10": "see fewshot:coldstart-k1; superseded by fewshot-r18.json",
    "fewshot:coldstart-items": "the old item-embeddings method; superseded by items.json",
    "fewshot-h200": "GPU run of the old cohort protocol (94 cold users); superseded by fewshot.json",
    "fewshot-h200-beauty": "GPU run of the old cohort protocol on Beauty; superseded by fewshot.json",
    "metarec-h200": "GPU run before the item-kNN blends; superseded by metarec.json",
    "metarec": "the --no-neural run (same 10 splits, identical rows); superseded by metarec-r18.json (goal 10.5 keeps it)",
    "quality-h200": "ML-100K with a 50 s cap on the H200; superseded by quality.json (early stopping)",
}

# Broken-looking numbers (a ratio near 0, a gain below -10 %) and their causes, by (file,
# protocol, method, metric) patterns. A flagged number without an entry is listed as unexplained.
KNOWN_CAUSES: list[tuple[str, str, str, str, str]] = [
    ("fewshot*", "coldstart-items", "item-embeddings", "ratio",
     "the old item-embeddings trained only on sequences that end in a new item, so the model "
     "pushes new items into every warm user's top 10 (issue 10 item 4)"),
    ("arrivals*", "arrivals-k*", "*", "gap_closed",
     "the retrain barely beats the stale model, so the denominator (retrain - stale) is near 0 "
     "and the ratio swings (see its CI in the JSON); above 1 the adapted model beats the full "
     "retrain. Read relative_gain over stale instead"),
    ("fewshot", "coldstart-k10", "*", "relative_gain",
     "Beauty's fold base was stopped by hand after ONE epoch for CPU (valid NDCG@10 0.0094, at "
     "popularity level), so the k=10 cohort of 1,049 users has 13 zero-shot hits against 12 "
     "adapted: -15 % is one hit, CI [-64 %, +114 %]. cohort+per-user and auto equal head-only+warm "
     "because validation on pretraining users chose that adapter and the per-user rule adapted "
     "nobody. Needs a converged Beauty fold base; the honest k-shot protocol (fewshot-r18.json, "
     "full-recipe fold bases) supersedes this run"),
    ("fewshot-r18", "coldstart-time-k1", "*", "relative_gain",
     "time folds at k=1: the strongest baseline is first-k-popularity (the items users rated first, "
     "counted on the users who arrived before the cut: sign-up picks change little over time) and "
     "it beats every model; per-user offsets need >= 3 support items, so per-user is the prefix "
     "base's zero-shot there. 2 folds, 472 users: the CIs are wide"),
    ("items*", "coldstart-items", "item-embeddings-noreplay", "ratio",
     "the control without warm replay, bias shift or ratio target: the old method, kept to "
     "show what the replay fixes"),
]


def flag_reason(row: dict) -> Optional[str]:
    """Why a result row looks broken (None when it does not)."""
    m, v = row.get("metric", ""), row.get("mean")
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "not a number"
    if m == "ratio" and row.get("protocol") in ("coldstart-items", "forgetting") and v < 0.5:
        return f"ratio {v:.3f}"
    if m == "relative_gain" and v < -0.10:
        return f"gain {v:+.1%}"
    if m == "gap_closed" and not -0.5 <= v <= 1.0:
        return f"gap_closed {v:.2f}"
    return None


def known_cause(file: str, row: dict) -> Optional[str]:
    for pat, proto, method, metric, cause in KNOWN_CAUSES:
        if fnmatch.fnmatch(file, pat) and fnmatch.fnmatch(row.get("protocol", ""), proto) \
                and fnmatch.fnmatch(row.get("method", ""), method) and row.get("metric") == metric:
            return cause
    return None
