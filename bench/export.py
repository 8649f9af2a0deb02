"""Export benchmark: ONNX export + validation of the ML-100K model, then FP32 vs optimized vs
INT8 (dynamic, static, weight-only) vs FP16 on this CPU: model size, in-process ONNX Runtime
latency at batch 1 and 64, NDCG@10 on the validation and test users, top-10 overlap with FP32,
batch invariance, the guard's decision and the served-model selection.

    python -m bench.export --checkpoint runs/ml-100k-cloze        # an existing pretrain() output
    python -m bench.export --train-seconds 900                    # pretrain one first (ML-100K, cloze)
    python -m bench.export --quick                                # smoke run: tiny model, few repeats

Latency: one ORT session per variant, ``--threads`` intra-op threads (1 by default: the machine
is shared, one thread gives the least noisy comparison), variants measured in interleaved rounds
(``--rounds``), each round ``--repeats`` timed calls after warm-up; ``mean``/``std`` are over the
rounds' p50s. ``onnx-fp32`` is the served default graph (``last_position_only``: the last block computed for
the scored position only); ``onnx-fp32-fullgraph`` traces ``next_item_scores`` as is; every other
variant derives from ``onnx-fp32``, and ``ratio`` is relative to it. NDCG@10 is computed from the
graph's own top-K (history masked in the graph, all
items candidates). Results -> bench/results/export.json (protocol ``export``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # `python bench/export.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

DATASET = "ml-100k"


def _log(msg: str) -> None:
    print(f"[bench.export {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get_model(args, workdir: Path):
    """(model, splits, provenance): the checkpoint given, or one pretrained here."""
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.model import FsRecModel

    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        ckpt = workdir / "model"
        if not (ckpt / "config.json").exists():
            from fsrec_serve.training import (
                default_model_config,
                default_train_config,
                pretrain,
            )

            splits = make_splits(load_dataset(DATASET, args.data_dir), SplitConfig(seed=0))
            over = dict(max_seq_len=20, hidden_size=32, num_hidden_layers=1) if args.quick else {}
            mc = default_model_config(splits, "cloze", **over)
            tc = default_train_config(splits, "cloze", output_dir=str(ckpt), progress=False, device="cpu",
                                      max_train_seconds=args.train_seconds, num_threads=args.threads,
                                      **({"epochs": 2, "patience": 0} if args.quick else {}))
            _log(f"pretraining {DATASET} (cloze, <= {args.train_seconds:.0f}s) into {ckpt}")
            pretrain(splits, mc, tc)
    info_path = ckpt / "fsrec_run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    cfg = SplitConfig(**info["split_config"]) if "split_config" in info else SplitConfig(seed=0)
    splits = make_splits(load_dataset(info.get("dataset", DATASET), args.data_dir), cfg)
    model = FsRecModel.from_pretrained(ckpt).eval()
    prov = {"checkpoint": str(ckpt), "best_epoch": info.get("best_epoch"),
            "best_valid": info.get("best_valid"), "split_config": dataclasses.asdict(cfg),
            "model_config": {k: getattr(model.config, k) for k in (
                "num_items", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_seq_len", "objective", "num_item_features")}}
    return model, splits, prov


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="pretrain() output folder (default: train one)")
    p.add_argument("--train-seconds", type=float, default=900.0, help="pretraining budget when training")
    p.add_argument("--workdir", default="/tmp/fsrec-bench-export", help="exports and the trained model")
    p.add_argument("--data-dir", default=None, help="data sets folder (env FSREC_DATA_DIR)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for latency")
    p.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per round at batch 64 (x5 at batch 1)")
    p.add_argument("--max-top-k", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="smoke run (tiny model, few repeats)")
    p.add_argument("--output", default=None, help="results path (default bench/results/export.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 1, 3
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)

    from exporters.export import export_onnx, validate_export
    from exporters.guard import check_batch_invariance, check_guard
    from exporters.optimize import optimize
    from exporters.quantize import detect_preset, quantize
    from exporters.runtime import make_session
    from exporters.selection import measure_latency, select_served_model

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, splits, prov = get_model(args, workdir)
    valid, test = splits.loo_valid(), splits.loo_test()
    calib = [s.items for s in splits.loo_train()]
    preset = detect_preset()
    _log(f"model {prov['model_config']}, {len(valid)} validation / {len(test)} test users, preset {preset}")

    # 1. export + validation on every held-out test user
    t0 = time.perf_counter()
    exp = export_onnx(model, workdir / "fp32", max_top_k=args.max_top_k, validate_with=test,
                      source=prov["checkpoint"], extra={"dataset": DATASET, "split_config": prov["split_config"]})
    export_s = time.perf_counter() - t0
    fp32 = exp.output_dir
    _log(f"export {export_s:.1f}s: {exp.validation}")

    # 2. candidates
    attn = [f"/encoder/encoder/layer.{i}/attention/self/MatMul{s}"
            for i in range(model.config.num_hidden_layers) for s in ("", "_1")]
    builders = {
        # the same model traced as is (next_item_scores: every position through every block)
        "onnx-fp32-fullgraph": lambda: export_onnx(model, workdir / "fp32-fullgraph", max_top_k=args.max_top_k,
                                                   last_position_only=False, source=prov["checkpoint"]).output_dir,
        "onnx-opt": lambda: optimize(fp32, workdir / "opt"),
        "onnx-opt-rightpad-fusion": lambda: optimize(fp32, workdir / "opt-default", attention_fusion="default"),
        "onnx-int8-dynamic": lambda: quantize(fp32, workdir / "int8-dynamic", mode="int8-dynamic", preset=preset),
        "onnx-int8-static": lambda: quantize(fp32, workdir / "int8-static", mode="int8-static", preset="avx2",
                                             calibration_histories=calib),
        f"onnx-int8-static-{preset}": lambda: quantize(
            fp32, workdir / f"int8-static-{preset}", mode="int8-static", preset=preset, calibration_histories=calib),
        "onnx-int8-static-matmul-noattn": lambda: quantize(
            fp32, workdir / "int8-static-mm", mode="int8-static", preset=preset, calibration_histories=calib,
            operators_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=attn),
        "onnx-int8-weight-only": lambda: quantize(fp32, workdir / "int8-weight-only", mode="int8-weight-only"),
        "onnx-fp16": lambda: quantize(fp32, workdir / "fp16", mode="fp16"),
    }
    dirs = {"onnx-fp32": fp32}
    for name, build in builders.items():
        t = time.perf_counter()
        dirs[name] = build()
        _log(f"built {name} in {time.perf_counter() - t:.1f}s")

    # 3. latency, interleaved rounds
    hist = [e.history for e in valid]
    lat = {n: {1: [], 64: []} for n in dirs}
    sessions = {n: make_session(d, intra_op_threads=args.threads) for n, d in dirs.items()}
    for r in range(args.rounds):
        for n, d in dirs.items():
            for b, rep in ((1, args.repeats * 5), (64, args.repeats)):
                lat[n][b].append(measure_latency(d, hist, batch_size=b, repeats=rep, session=sessions[n])["p50_ms"])
        _log(f"latency round {r + 1}/{args.rounds} done")

    # 4. accuracy, guard, batch invariance
    results, rows, guards = [], {}, {}

    def add(method, metric, values, **extra):
        vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        results.append({"dataset": DATASET, "protocol": "export", "method": method, "metric": metric,
                        "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "n": len(vals), **extra})

    v = exp.validation
    add("onnx-fp32", "max_abs_diff", v.max_abs_diff, users=v.n_users, reference="pytorch")
    add("onnx-fp32", "top10_overlap", v.top10_overlap, users=v.n_users, reference="pytorch")
    add("onnx-fp32", "seconds", export_s, step="export+validation")
    fp32_b64 = statistics.median(lat["onnx-fp32"][64])
    for n, d in dirs.items():
        gpu_only = n == "onnx-fp16"
        g = check_guard(d, fp32, valid, raise_on_fail=False, batch_invariance=not gpu_only)
        guards[n] = g
        g_test = check_guard(d, fp32, test, raise_on_fail=False, batch_invariance=False)
        inv = g.batch_invariance or check_batch_invariance(d, valid)
        try:
            vd = validate_export(d, model, test, fail_factor=1e12, min_top10_overlap=0.0)
            max_diff = vd.max_abs_diff
        except Exception:  # noqa: BLE001
            max_diff = float("nan")
        size_kb = (Path(d) / "model.onnx").stat().st_size / 1024
        b64 = statistics.median(lat[n][64])
        add(n, "size_kb", size_kb)
        add(n, "p50_ms", lat[n][1], batch=1, threads=args.threads)
        add(n, "p50_ms", lat[n][64], batch=64, threads=args.threads)
        add(n, "ratio", fp32_b64 / b64, batch=64, what="FP32 p50 / this p50 (speed-up)")
        add(n, "ndcg@10", g.ndcg_candidate, split="valid", users=g.n_users)
        add(n, "ndcg@10", g_test.ndcg_candidate, split="test", users=g_test.n_users)
        add(n, "top10_overlap", g.top10_overlap, split="valid", reference="onnx-fp32")
        if n != "onnx-fp32":
            add(n, "max_abs_diff", max_diff, users=len(test), reference="pytorch")
        add(n, "batch_max_score_diff", inv.max_score_diff, batch=inv.batch_size, users=inv.n_users)
        add(n, "guard_passed", 1.0 if g.passed else 0.0,
            note="GPU target: batch invariance not checked on CPU" if gpu_only else "")
        rows[n] = {"dir": str(d), "size_kb": round(size_kb, 1), "p50_ms_b1": round(statistics.median(lat[n][1]), 3),
                   "p50_ms_b64": round(b64, 2), "speedup_b64": round(fp32_b64 / b64, 3),
                   "ndcg10_valid": round(g.ndcg_candidate, 5), "ndcg10_test": round(g_test.ndcg_candidate, 5),
                   "ndcg_drop_rel_valid": round(g.ndcg_drop_rel, 5), "top10_overlap": round(g.top10_overlap, 4),
                   "max_abs_diff_vs_pytorch": max_diff, "batch_invariant": inv.invariant,
                   "batch_max_score_diff": inv.max_score_diff, "guard_passed": g.passed, "guard_reasons": g.reasons}
        _log(f"{n:34s} {rows[n]}")

    # 5. which CPU model is served
    cpu_cands = {n: dirs[n] for n in dirs
                 if n not in ("onnx-fp32", "onnx-fp16", "onnx-opt-rightpad-fusion", "onnx-fp32-fullgraph")}
    decision = select_served_model(cpu_cands, fp32, valid, batch_size=64, repeats=args.repeats,
                                   rounds=args.rounds, intra_op_threads=args.threads,
                                   guard_reports={"reference": guards["onnx-fp32"],
                                                  **{n: guards[n] for n in cpu_cands}})
    _log(f"served: {decision.chosen} — {decision.reason}")
    int8 = {n: r for n, r in rows.items() if "int8" in n}
    full_b64 = rows["onnx-fp32-fullgraph"]["p50_ms_b64"]
    goal = {n: {"speedup_b64_vs_same_graph_fp32": r["speedup_b64"],
                "speedup_b64_vs_fullgraph_fp32": round(full_b64 / r["p50_ms_b64"], 3),
                "ndcg_drop_rel_valid": r["ndcg_drop_rel_valid"], "batch_invariant": r["batch_invariant"],
                "meets_goal_same_graph": r["speedup_b64"] >= 1.5 and r["ndcg_drop_rel_valid"] <= 0.01
                and r["batch_invariant"]}
            for n, r in int8.items()}
    command = "python -m bench.export " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = write_results(
        "export", command.strip(), results,
        extra={"model": prov, "preset": preset, "threads": args.threads, "rounds": args.rounds,
               "repeats": args.repeats, "variants": rows,
               "served": {"chosen": decision.chosen, "dir": decision.chosen_dir, "reason": decision.reason},
               "int8_goal": goal, "load_average": os.getloadavg()},
        path=Path(args.output) if args.output else None,
    )
    _log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
