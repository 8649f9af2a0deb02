"""Ensembles: does fusing 2-3 rankers pay, and what does it cost to serve?

Protocol ``ensemble`` (registered in bench/goals.py before the main run), ML-100K, leave-one-out
over every user, full ranking, history excluded:

* members: the shipped default recipe (``default_model_config`` / ``default_train_config``) with
  seeds 0, 1, 2 on ``SplitConfig(seed=0, cold_user_frac=0, cold_item_frac=0)``; checkpoints cached
  under ``--workdir``;
* rows: each member's ndcg@10, the ensemble's (``mean-logprob``, the default) and
  ``ensemble-rrf`` (shown, not judged); ``relative_gain`` of the ensemble over the best member,
  the best member chosen on the VALIDATION item, measured on the test item with a paired
  bootstrap over users (ci_low, ci_high, n_users, undefined_share, baseline);
* serving cost: one tritonserver with the best member's graph (``single``, the ranker of
  ``fsrec``) and the ensemble of all members (``ensemble``), perf_analyzer at concurrency 16 on the
  test histories; ``cpu_ms_per_seq`` = server CPU (the process tree, /proc) per sequence.

    python -m bench.ensemble                 # main run (CPU-hours: 3 trainings)
    python -m bench.ensemble --quick         # smoke run: 1 epoch, 100 users -> ensemble-quick.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results

FUSED = {"ensemble": "mean-logprob", "ensemble-rrf": "rrf"}  # method -> fusion rule


def member(splits, seed: int, workdir: Path, epochs: int | None, log):
    """The default recipe with ``seed``, from its cached checkpoint when there is one."""
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import (
        default_model_config,
        default_train_config,
        pretrain,
    )

    ckpt = workdir / (f"seed{seed}" if epochs is None else f"seed{seed}-e{epochs}")
    if (ckpt / "config.json").exists():
        model = FsRecModel.from_pretrained(ckpt)
    else:
        over = {} if epochs is None else {"epochs": epochs}
        tc = default_train_config(splits, seed=seed, progress=False, **over)
        model = pretrain(splits, default_model_config(splits), tc).model
        model.save_pretrained(ckpt)
        log(f"trained seed {seed} -> {ckpt}")
    model.item_map = splits.item_map
    return model.eval(), ckpt


def per_user_ndcg(scorer, examples) -> np.ndarray:
    from fsrec_serve.evaluation import evaluate_next_item
    from fsrec_serve.evaluation.metrics import ndcg_at_k

    return ndcg_at_k(np.asarray(evaluate_next_item(scorer, examples, ks=(10,), return_ranks=True)["ranks"]), 10)


def gain_row(base: np.ndarray, other: np.ndarray, baseline: str, n_boot: int = 2000) -> dict:
    """ensemble / best member - 1, paired bootstrap over users (undefined resamples counted)."""
    idx = np.random.default_rng(0).integers(0, base.size, size=(n_boot, base.size))
    bm, om = base[idx].mean(1), other[idx].mean(1)
    ok = bm > 0
    lo, hi = np.percentile(om[ok] / bm[ok] - 1.0, [2.5, 97.5]) if ok.any() else (float("nan"),) * 2
    return {"dataset": "ml-100k", "protocol": "ensemble", "method": "ensemble", "metric": "relative_gain",
            "mean": float(other.mean() / base.mean() - 1.0), "ci_low": float(lo), "ci_high": float(hi),
            "n_users": int(base.size), "undefined_share": float(1 - ok.mean()), "baseline": baseline, "n": 1}


def quality_rows(models: dict, valid, test, log) -> tuple[list, str]:
    """Rows of every member and fusion; -> (rows, the best member's name on validation)."""
    from exporters.ensemble import EnsembleScorer

    rows, val, tst = [], {}, {}
    scorers = {**models, **{m: EnsembleScorer(list(models.values()), fusion=f) for m, f in FUSED.items()}}
    for name, s in scorers.items():
        val[name], tst[name] = per_user_ndcg(s, valid), per_user_ndcg(s, test)
        rows.append(summarize([tst[name].mean()], dataset="ml-100k", protocol="ensemble", method=name,
                              metric="ndcg@10", valid_ndcg10=round(float(val[name].mean()), 5), n_users=len(test)))
        log(f"{name}: valid {val[name].mean():.4f} test {tst[name].mean():.4f}")
    best = max(models, key=lambda n: val[n].mean())
    rows.append(gain_row(tst[best], tst["ensemble"], best))
    return rows, best


def cost_rows(models: dict, ckpts: dict, best: str, test, workdir: Path, interval_ms: int, log) -> list:
    """server CPU per sequence: the best member alone vs the ensemble, same traffic."""
    from bench.serving_cost_parts import pa_input_data
    from bench.serving_cost_points import LoadSpec, perf_analyzer_point, write_json
    from exporters import export_onnx
    from exporters.ensemble_repository import build_ensemble_repository
    from exporters.repository import build_model_repository
    from fsrec_serve.serving import serve

    exports = {}
    for name, m in models.items():
        exports[name] = workdir / "exports" / name
        if not (exports[name] / "model.onnx").exists():
            export_onnx(m, exports[name], source=str(ckpts[name]))
    repo = workdir / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    build_model_repository(repo, exports[best], target="cpu")
    build_ensemble_repository(repo, list(exports.values()))
    L = models[best].config.max_seq_len
    data = write_json(workdir / "pa-test.json", pa_input_data([e.history[-L:] for e in test], "item_ids"))
    rows, load = [], LoadSpec(interval_ms=interval_ms)
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=300,
               log_file=workdir / "tritonserver.log") as server:
        for method, model in (("single", "fsrec"), ("ensemble", "fsrec_ensemble")):
            p = perf_analyzer_point(server, model, data, 16, load, workdir / f"pa-{method}.csv")
            log(f"{method}: {p['cpu_ms_per_seq']:.3f} ms CPU/seq, {p['throughput_rps']:.0f}/s, p99 {p['p99_ms']:.1f} ms")
            for metric in ("cpu_ms_per_seq", "throughput_rps", "p99_ms"):
                rows.append({"dataset": "ml-100k", "protocol": "ensemble", "method": method, "metric": metric,
                             "mean": round(float(p[metric]), 4), "std": 0.0, "n": 1, "concurrency": 16,
                             "mean_batch": p.get("mean_batch"), "sequences": p.get("sequences"),
                             **({"single_is": best} if method == "single" else {})})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="member seeds (2 or 3)")
    p.add_argument("--workdir", default="/tmp/fsrec-bench-ensemble", help="checkpoints, exports, server files")
    p.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    p.add_argument("--no-serving", action="store_true", help="skip the serving cost")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 100 users, ensemble-quick.json")
    p.add_argument("--out", default=None, help="results name (default ensemble / ensemble-quick)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True)
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits

    splits = make_splits(load_dataset("ml-100k", args.data_dir),
                         SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))
    valid, test = splits.loo_valid(), splits.loo_test()
    if args.quick:
        valid, test = valid[:100], test[:100]
    workdir = Path(args.workdir)
    built = {f"member-seed{s}": member(splits, s, workdir, 1 if args.quick else None, log) for s in args.seeds}
    models, ckpts = {k: v[0] for k, v in built.items()}, {k: v[1] for k, v in built.items()}
    rows, best = quality_rows(models, valid, test, log)
    if not args.no_serving:
        rows += cost_rows(models, ckpts, best, test, workdir, 1000 if args.quick else args.interval_ms, log)
    name = args.out or ("ensemble-quick" if args.quick else "ensemble")
    command = "python -m bench.ensemble " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(name, command, rows, extra={"best_member_on_valid": best, "notes": (
        "ML-100K leave-one-out over every user, full ranking, history excluded; members = the shipped default "
        "recipe with the listed seeds; best member chosen on the validation item; relative_gain CI = paired "
        "bootstrap over users (2,000 resamples); serving: one tritonserver, perf_analyzer at concurrency 16 on "
        f"the test histories, server process-tree CPU per sequence; wall {time.perf_counter() - t0:.0f} s")})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
