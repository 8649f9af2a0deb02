"""Pruning: does a pruned model serve faster at no loss? (issue 19.1, protocol ``pruning``)

For each ``--model LABEL=DIR`` (a folder written by ``fsrec train``; LABEL = the data set's row
name, e.g. ``ml-100k``, ``beauty``), on the split recorded with it (``RunRecord.splits``):

* ``served``: the full model's FP32 ONNX export (``export_onnx`` defaults: last block for the
  scored position only); every candidate is built from the same full model by
  ``exporters.prune_select.build_pruned`` (``catalogue-<n>``, ``heads-<n>``, ``ffn-<n>``, joined
  with ``+``; heads / ffn ones with the recovery fine-tune, ``--recover-epochs``) and exported;
* ``ndcg@10``: the test item, full ranking, history excluded, cold items not candidates (the
  evaluation of ``fsrec evaluate``: ``evaluate_next_item``); a catalogue-pruned model is scored in
  the full catalogue (pruned items never ranked, dropped from histories as a client drops them);
  ``ndcg_loss`` = 1 - candidate / served;
* ``throughput``: ONNX Runtime, CPU, 1 intra-op thread, batch 64 of test histories padded to
  max_seq_len, sequences/s; every model timed in ``--rounds`` interleaved rounds; the median over
  rounds; ``throughput_ratio`` = median over rounds of candidate / served in the same round;
  ``macs_ratio`` (on the throughput rows) = served / candidate multiply-accumulates per sequence,
  what the removed FLOPs allow;
* ``size_mb``: model.onnx;
* ``served-recovered``: a control, not a candidate: the unpruned model given the same recovery
  fine-tune, so that a pruned model's NDCG is read against what the extra epochs alone change;
* ``selected``: the candidate ``select_served_model`` picks on the VALIDATION item (the guard of a
  quantized candidate: NDCG@10 drop <= 1 %, top-10 overlap >= 0.9, batch invariance; the fastest
  passing one if >= 1.05x faster at batch 64, 1 thread; else ``served``), its rows repeated.

    python -m bench.pruning --model ml-100k=/tmp/prune/ml100k --workdir /tmp/prune/bench
    python -m bench.pruning --model beauty=/tmp/bench/train-default/model --workdir /tmp/prune/bench
    python -m bench.pruning --model ml-100k=DIR --quick      # smoke: 200 users, 1 round -> pruning-quick.json

Rows of the other data sets already in the results file are kept (one data set per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, write_results  # noqa: E402

BATCH = 64
CONTROL = "served-recovered"  # the unpruned model with the same recovery fine-tune (a control row, never selected)
DEFAULT_CANDIDATES = {  # per data set label; catalogue sizes are shares of the catalogue
    "ml-100k": ("catalogue-1000", "catalogue-500", "heads-2", "ffn-128", "ffn-64", "heads-2+ffn-64"),
    "beauty": ("catalogue-6000", "catalogue-3000", "catalogue-1500", "heads-2", "ffn-64", "heads-2+ffn-64",
               "heads-2+ffn-64+catalogue-3000"),  # the last reuses heads-2+ffn-64's recovered model
}


def log(msg: str) -> None:
    print(f"[bench.pruning {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def macs_per_sequence(model, L: int) -> float:
    """Multiply-accumulates of the served graph for one history of length L (last block for the
    scored position only; per-layer head and FFN widths read from the modules)."""
    H, total = int(model.config.hidden_size), 0.0
    layers = list(model.encoder.encoder.layer)
    for i, layer in enumerate(layers):
        A, inner = layer.attention.self.all_head_size, layer.intermediate.dense.out_features
        q = 1 if i == len(layers) - 1 else L  # positions whose query / FFN is computed
        total += 2 * L * H * A + q * H * A + 2 * q * L * A + q * A * H + 2 * q * H * inner
    return total + (int(model.config.num_items) + 1) * H


def ndcg(scorer, examples, cmask) -> float:
    from fsrec_serve.evaluation import evaluate_next_item

    return float(evaluate_next_item(scorer, examples, ks=(10,), candidate_mask=cmask, batch_size=256)["ndcg@10"])


def throughput(dirs: dict, translate: dict, histories, rounds: int, calls: int) -> dict:
    """name -> (sequences/s per round, ratio to served per round): interleaved rounds (the order
    rotated every round), 1 thread."""
    from exporters.runtime import ExportMeta, feeds, make_session
    from fsrec_serve.idmap import pad_left

    sess = {n: make_session(d, intra_op_threads=1) for n, d in dirs.items()}
    L = ExportMeta.load(dirs["served"]).max_seq_len
    batches = [histories[i:i + BATCH] for i in range(0, len(histories) - BATCH + 1, BATCH)][:calls]
    inputs = {n: [feeds(s, pad_left(translate[n](b), L)) for b in batches] for n, s in sess.items()}
    for n, s in sess.items():  # warm-up
        s.run(None, inputs[n][0])
    per_round: dict = {n: [] for n in sess}
    names = list(sess)
    for r in range(rounds):  # each round starts at another model: no model always runs first
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            for x in inputs[n]:
                sess[n].run(None, x)
            per_round[n].append(BATCH * len(inputs[n]) / (time.perf_counter() - t))
    return {n: (v, [a / b for a, b in zip(v, per_round["served"])]) for n, v in per_round.items()}


def build(model, splits, names, workdir: Path, options, ref_dir: Path) -> dict:
    from exporters.prune import prune_catalogue, structure_importance
    from exporters.prune_select import (
        PrunedCandidate,
        build_pruned,
        export_candidate,
        parse_candidate,
    )

    importance = None
    if any(k != "catalogue" for n in names for k, _ in parse_candidate(n)):
        importance = structure_importance(model, splits.loo_train(), options.train_config)
    out = {}
    for name in names:
        t0 = time.perf_counter()
        steps = parse_candidate(name)
        structural = "+".join(f"{k}-{v}" for k, v in steps if k != "catalogue")
        keep = dict(steps).get("catalogue")
        if keep and structural in out:  # the same recovered model, its catalogue pruned (no second fine-tune)
            pc = prune_catalogue(out[structural].model, splits.loo_train(), keep, options.half_life)
            cand = PrunedCandidate(name=name, model=pc.model, catalogue=pc)
        else:
            cand = build_pruned(model, splits, name, options, importance)
        export_candidate(cand, workdir / name, ref_dir, splits.loo_valid()[:256], source=str(ref_dir))
        out[name] = cand
        log(f"{name}: built and exported in {time.perf_counter() - t0:.0f} s")
    return out


def rows_for(label: str, model_dir: Path, names, workdir: Path, args) -> tuple[list, dict]:
    import copy
    import dataclasses

    import torch

    from exporters.export import export_onnx
    from exporters.guard import check_guard
    from exporters.prune import recover
    from exporters.prune_select import PruneOptions
    from exporters.selection import select_served_model
    from fsrec_serve.data import RunRecord
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import TrainConfig, pretrain_candidate_mask

    torch.set_num_threads(1)
    record = RunRecord.load(model_dir)
    splits = record.splits(args.data_dir)
    model = FsRecModel.from_pretrained(model_dir).eval()
    test, valid = splits.loo_test(), splits.loo_valid()
    if args.quick:
        test, valid = test[:200], valid[:200]
    tc_path = model_dir / "train_config.json"
    tc = dataclasses.replace(TrainConfig.load(tc_path) if tc_path.exists() else TrainConfig(), output_dir=None,
                             progress=False, num_threads=1, device="cpu")
    options = PruneOptions(recover_epochs=1 if args.quick else args.recover_epochs, train_config=tc)
    ref_dir = workdir / "served"
    export_onnx(model, ref_dir, source=str(model_dir), extra=record.source_dict())
    built = build(model, splits, names, workdir, options, ref_dir)
    # control, not a candidate: the unpruned model given the same recovery fine-tune (separates what
    # pruning costs from what the extra epochs of training change)
    control = recover(copy.deepcopy(model), splits, tc, epochs=options.recover_epochs,
                      patience=options.recover_patience)
    export_onnx(control, workdir / CONTROL, source=str(model_dir), extra=record.source_dict())
    cmask = pretrain_candidate_mask(splits, model.config.num_items)
    scorers = {"served": model, CONTROL: control, **{n: c.scorer() for n, c in built.items()}}
    models = {"served": model, CONTROL: control, **{n: c.model for n, c in built.items()}}
    dirs = {"served": ref_dir, CONTROL: workdir / CONTROL, **{n: c.export_dir for n, c in built.items()}}
    nd = {n: ndcg(s, test, cmask) for n, s in scorers.items()}
    log("test NDCG@10: " + ", ".join(f"{n} {v:.4f}" for n, v in nd.items()))
    decision = select_served_model({n: d for n, d in dirs.items() if n not in ("served", CONTROL)}, ref_dir, valid,
                                   batch_size=BATCH, intra_op_threads=1, rounds=1 if args.quick else 3)
    chosen = "served" if decision.chosen == "reference" else decision.chosen
    ctrl = check_guard(dirs[CONTROL], ref_dir, valid, raise_on_fail=False, batch_size=BATCH)  # shown, not chosen
    guards = {**decision.candidates, CONTROL: {"passed": ctrl.passed, "reasons": ctrl.reasons, "guard": ctrl.to_dict()}}
    log(f"selected on validation: {chosen} ({decision.reason})")
    translate = {n: (lambda h: h) for n in dirs}
    for n, c in built.items():
        if c.catalogue is not None:
            to_p = c.catalogue.to_pruned()
            translate[n] = lambda hs, to_p=to_p: [[int(to_p[i]) for i in h if to_p[i]] for h in hs]
    hist = [e.history for e in test]
    tp = throughput(dirs, translate, hist, 1 if args.quick else args.rounds, args.calls)
    L = int(model.config.max_seq_len)
    base = {"dataset": label, "protocol": "pruning"}
    rows = []
    for method, src in [*((n, n) for n in dirs), ("selected", chosen)]:
        ref_macs = macs_per_sequence(model, L)
        g = guards.get("reference" if src == "served" else src, {})
        extra = {"selected_is": chosen} if method == "selected" else {"control": True} if method == CONTROL else {}
        info = dict(**base, method=method, std=0.0, n=1, **extra)
        sizes = (Path(dirs[src]) / "model.onnx").stat().st_size / 2**20
        rates, ratios = tp[src]
        rows += [
            {**info, "metric": "ndcg@10", "mean": round(nd[src], 5), "n_users": len(test),
             "guard_passed": g.get("passed"), "guard_reasons": g.get("reasons"),
             "valid_ndcg_drop": g.get("guard", {}).get("ndcg_drop_rel"),
             "top10_overlap": g.get("guard", {}).get("top10_overlap")},
            {**info, "metric": "ndcg_loss", "mean": round(1.0 - nd[src] / nd["served"], 5)},
            {**info, "metric": "throughput", "mean": round(statistics.median(rates), 1), "std": round(
                statistics.stdev(rates), 1) if len(rates) > 1 else 0.0, "n": len(rates), "batch_size": BATCH,
             "unit": "sequences/s", "intra_op_threads": 1},
            {**info, "metric": "throughput_ratio", "mean": round(statistics.median(ratios), 4), "n": len(ratios),
             "std": round(statistics.stdev(ratios), 4) if len(ratios) > 1 else 0.0,
             "macs_ratio": round(ref_macs / macs_per_sequence(models[src], L), 3), "batch_size": BATCH},
            {**info, "metric": "size_mb", "mean": round(sizes, 3),
             "parameters": sum(p.numel() for p in models[src].parameters())},
        ]
        log(f"{method}: ndcg {nd[src]:.4f}, {statistics.median(rates):.0f} seq/s ({statistics.median(ratios):.2f}x), "
            f"{sizes:.2f} MB")
    return rows, {"selected": chosen, "reason": decision.reason}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="LABEL=DIR",
                   help="data set row name and the --output-dir of its `fsrec train` (repeatable)")
    p.add_argument("--candidates", nargs="+", default=None, help="candidate names (default: per data set)")
    p.add_argument("--workdir", default="/tmp/fsrec-bench-pruning", help="exports go to <workdir>/<label>/<name>")
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--recover-epochs", type=int, default=5, help="recovery fine-tune epochs (heads / ffn)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    p.add_argument("--calls", type=int, default=8, help="batches of 64 per model and round")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 users, 1 round, 1 recovery epoch")
    p.add_argument("--out", default=None, help="results name (default pruning / pruning-quick)")
    args = p.parse_args(argv)
    name = args.out or ("pruning-quick" if args.quick else "pruning")
    path = RESULTS_DIR / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows, runs = [], dict(old.get("runs", {}))
    command = "python -m bench.pruning " + " ".join(argv if argv is not None else sys.argv[1:])
    for spec in args.model:
        label, _, d = spec.partition("=")
        if not d:
            p.error(f"--model {spec!r}: give LABEL=DIR, e.g. ml-100k=/tmp/prune/ml100k")
        names = tuple(args.candidates or DEFAULT_CANDIDATES.get(label, DEFAULT_CANDIDATES["ml-100k"]))
        t0 = time.perf_counter()
        r, info = rows_for(label, Path(d), names, Path(args.workdir) / label, args)
        rows += r
        runs[label] = {**info, "command": command, "model": d, "seconds": round(time.perf_counter() - t0)}
    labels = {r["dataset"] for r in rows}
    rows = [r for r in old.get("results", []) if r.get("dataset") not in labels] + rows
    out = write_results(name, command, rows, extra={"runs": runs, "notes": (
        "ONNX Runtime CPU, 1 intra-op thread, batch 64 of test histories padded to max_seq_len; interleaved "
        "rounds, median; NDCG@10 on the test item of the model's recorded split (evaluate_next_item, full "
        "ranking); selected = select_served_model's choice on the validation item (guard of quantized "
        "candidates); candidates built from the full trained model, heads/ffn with a recovery fine-tune")})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
