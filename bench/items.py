"""New items without harm (protocol ``coldstart-items``, ML-100K).

Split: ``SplitConfig(seed, cold_item_frac=--cold-item-frac)`` (10 % cold users; the latest items
to appear held out of pretraining: 5 % by default, as items.json (goal 10.4); 15 % in the
registered run items-r18.json (goal 18.4): the newest 5 % of ML-100K's catalogue give only 95
evaluation events on 13 items, the newest 15 % give 2,171 on 83 items). One SASRec-style (causal) model pretrained on the warm users (cached under
``--cache``). Cold-item events (``experiments.coldstart.cold_item_events``): for each new item
its first 3 interactions by warm users (in time) are the adaptation data, the later ones the
evaluation events (history = the user's preceding items, target = the new item, full ranking).

Methods
    * ``zero-shot``: the new items as pretraining left them (side features only);
    * ``popularity``: pretraining counts (new items have none);
    * ``item-embeddings``: ``adapt_cold_items`` with replay of the warm training sequences and
      bias calibration on the warm users' validation item (the test item is never used);
    * ``item-embeddings-noreplay``: the same fit on the new items' sequences alone, no replay,
      no calibration (what pushed new items into everyone's top 10 before).

Metrics: ``ndcg@10`` / ``hr@10`` on the new items' evaluation events, with a 95 % bootstrap CI
over the events (``ci_low`` / ``ci_high``, ``n`` = ``n_events``; the set of new items fixed) and
a more conservative one that resamples the new items, then their events (``ci_low_items`` /
``ci_high_items``, ``n_event_items``; both ``kshot.two_level_mean``); ``ratio`` = warm users'
leave-one-out test NDCG@10 after / before (95 % bootstrap CI over warm users); ``seconds``.

    python -m bench.items                 # ML-100K, seed 0, newest 5 % of the items (items.json)
    python -m bench.items --cold-item-frac 0.15 --out items-r18 --num-threads 1   # goal 18.4
    python -m bench.items --quick         # smoke run (tiny model, 1 epoch)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PROTOCOL = "coldstart-items"


def pretrained(splits, args, log):
    """The cached causal model of (ml-100k, seed) or a fresh pretraining (cached)."""
    from fsrec_serve.model import FsRecModel
    from fsrec_serve.training import default_model_config, default_train_config, pretrain

    tag = "quick" if args.quick else f"L{args.max_seq_len}"
    if args.cold_item_frac != 0.05:  # the default split keeps its old cache name
        tag += f"-ci{args.cold_item_frac:g}"
    out = Path(args.cache) / f"ml-100k-causal-s{args.seed}-{tag}"
    if (out / "fsrec_run.json").exists():
        log(f"using cached pretrained model {out}")
        return FsRecModel.from_pretrained(str(out)).eval()
    mo = dict(max_seq_len=args.max_seq_len)
    to = dict(seed=args.seed, device="cpu", num_threads=args.num_threads, progress=False,
              output_dir=str(out), patience=args.patience)
    if args.quick:
        mo.update(max_seq_len=20, hidden_size=32, num_hidden_layers=1)
        to.update(epochs=1, patience=0)
    log(f"pretraining -> {out}")
    res = pretrain(splits, default_model_config(splits, "causal", **mo),
                   default_train_config(splits, "causal", **to))
    return res.model.eval()


def _ranks(model, examples):
    from fsrec_serve.evaluation import evaluate_next_item

    return evaluate_next_item(model, examples, ks=(10,), return_ranks=True)


def event_ci(ranks, events, n_boot: int = 2000, seed: int = 0) -> dict:
    """NDCG@10 of the evaluation events with 95 % bootstrap CIs: over the events (one group) and
    over the new items, then their events (groups = target items)."""
    import numpy as np

    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.kshot import two_level_mean

    v = ndcg_at_k(np.asarray(ranks), 10)
    ev = two_level_mean([v], n_boot=n_boot, seed=seed)
    targets = np.asarray([e.target for e in events])
    by_item = [v[targets == t] for t in np.unique(targets)]
    it = two_level_mean(by_item, n_boot=n_boot, seed=seed)
    return {"ci_low": ev["ci_low"], "ci_high": ev["ci_high"], "n_events": int(v.size),
            "ci_low_items": it["ci_low"], "ci_high_items": it["ci_high"], "n_event_items": len(by_item)}


def frontier(model, items, events, warm, warm0, shifts=(-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)) -> list[dict]:
    """DIAGNOSTIC only (never used to choose anything): new-item NDCG@10 and warm test ratio if
    the new items' biases were shifted by ``d`` more than the calibration chose; shows the
    trade-off between the two goals."""
    import numpy as np
    import torch

    from fsrec_serve.evaluation.metrics import ndcg_at_k

    idx = torch.as_tensor(items)
    b0 = model.output_bias.bias[idx].clone()
    out = []
    for d in shifts:
        with torch.no_grad():
            model.output_bias.bias[idx] = b0 - d
        w = ndcg_at_k(np.asarray(_ranks(model, warm)["ranks"]), 10)
        out.append({"extra_shift": d, "new_ndcg@10": _ranks(model, events)["ndcg@10"],
                    "warm_ratio": float(w.mean() / warm0.mean())})
    with torch.no_grad():
        model.output_bias.bias[idx] = b0
    return out


def run(args, log) -> tuple[list[dict], dict]:
    import numpy as np

    from fsrec_serve.adaptation.items import ColdItemConfig, adapt_cold_items
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits
    from fsrec_serve.evaluation.metrics import ndcg_at_k
    from fsrec_serve.experiments.arrivals import paired_relative_gain
    from fsrec_serve.experiments.coldstart import cold_item_events, interaction_times, popularity_for

    data = load_dataset("ml-100k", args.data_dir)
    splits = make_splits(data, SplitConfig(seed=args.seed, cold_item_frac=args.cold_item_frac))
    model = pretrained(splits, args, log)
    if args.pretrain_only:
        return [], {}
    adapt_seqs, events = cold_item_events(splits, interaction_times(data), n_adapt=3)
    warm = splits.loo_test()
    users = [e.user for e in warm]
    warm0 = ndcg_at_k(np.asarray(_ranks(model, warm)["ranks"]), 10)
    rows, details = [], {"cold_item_frac": args.cold_item_frac, "n_events": len(events),
                         "n_adapt_sequences": len(adapt_seqs),
                         "n_new_items": int(len(splits.cold_items)), "n_warm_users": len(warm)}

    def add(method, metric, value, n=1, **extra):
        rows.append({"dataset": "ml-100k", "protocol": PROTOCOL, "method": method, "metric": metric,
                     **extra, "mean": float(value), "std": 0.0, "n": n})

    def add_events(method, m):
        ci = event_ci(m["ranks"], events, seed=args.seed)
        add(method, "ndcg@10", m["ndcg@10"], n=len(events), **ci)
        add(method, "hr@10", m["hr@10"], n_events=len(events))
        return ci

    for method, scorer in (("zero-shot", model), ("popularity", popularity_for(splits))):
        add_events(method, _ranks(scorer, events))
    variants = {
        "item-embeddings": (ColdItemConfig(seed=args.seed),
                            dict(replay=splits.loo_train(), warm_valid=splits.loo_valid())),
        "item-embeddings-noreplay": (ColdItemConfig(seed=args.seed, replay_weights=(0.0,), bias_shifts=(0.0,),
                                                    shift_forms=("uniform",), target_ratio=0.0), {}),
    }
    for method, (cfg, kw) in variants.items():
        t0, c0 = time.perf_counter(), time.process_time()
        res = adapt_cold_items(model, adapt_seqs, splits.cold_items, cfg, **kw)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        m = _ranks(res.model, events)
        warm1 = ndcg_at_k(np.asarray(_ranks(res.model, warm)["ranks"]), 10)
        g = paired_relative_gain(warm1, warm0, users, seed=args.seed)
        ratio = float(warm1.mean() / warm0.mean())
        ci = add_events(method, m)
        add(method, "ratio", ratio, ci_low=g["ci_low"] + 1, ci_high=g["ci_high"] + 1,
            n_users=g["n_users"], note="warm users' LOO test NDCG@10 after / before")
        add(method, "seconds", seconds)
        add(method, "cpu_seconds", cpu)
        details[method] = {k: v for k, v in res.info.items() if k != "config"}
        if method == "item-embeddings":
            details["frontier"] = frontier(res.model, splits.cold_items, events, warm, warm0)
        log(f"{method}: new-item ndcg@10 {m['ndcg@10']:.4f} [{ci['ci_low']:.4f}, {ci['ci_high']:.4f}] "
            f"(items [{ci['ci_low_items']:.4f}, {ci['ci_high_items']:.4f}]) warm ratio {ratio:.4f} "
            f"[{g['ci_low'] + 1:.3f}, {g['ci_high'] + 1:.3f}] ({seconds:.0f}s) info {details[method]}")
    details["warm_ndcg@10_before"] = float(warm0.mean())
    return rows, details


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 1)))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache", default="runs/items-cache")
    p.add_argument("--max-seq-len", type=int, default=50, help="history window of the model")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument("--cold-item-frac", type=float, default=0.05,
                   help="share of the catalogue (the latest items to appear) held out as new items")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pretrain-only", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from bench.arrivals import save, setup

    log = setup(args)
    rows, details = run(args, log)
    if rows:
        save("items", args, argv, rows, {"details": details}, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
