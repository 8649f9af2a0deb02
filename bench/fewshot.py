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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="ml-100k or beauty")
    p.add_argument("--folds", type=int, default=5, help="ML-100K user folds (one pretraining each)")
    p.add_argument("--ks", nargs="+", type=int, default=KS)
    p.add_argument("--data-dir", default=None, help="data folder (env FSREC_DATA_DIR)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=int(os.environ.get("FSREC_BENCH_THREADS", 2)))
    p.add_argument("--beauty-cold", type=int, default=2500, help="Beauty cold users (one fold)")
    p.add_argument("--beauty-min-len", type=int, default=6, help="Beauty cold users' least length")
    p.add_argument("--beauty-max-seq-len", type=int, default=20, help="Beauty history cap (budget)")
    p.add_argument("--beauty-epochs", type=int, default=12, help="Beauty pretraining epochs (budget)")
    p.add_argument("--beauty-seconds", type=float, default=1500.0, help="Beauty pretraining wall-clock cap")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 epochs")
    p.add_argument("--cache", default="runs/fewshot", help="fold checkpoints + per-fold records")
    p.add_argument("--pretrain-only", action="store_true")
    p.add_argument("--only-folds", nargs="+", type=int, default=None)
    args = p.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    import torch

    torch.set_num_threads(args.num_threads)
    folds = fold_splits(args.dataset, args)
    for f, sp in enumerate(folds):
        if args.only_folds is not None and f not in args.only_folds:
            continue
        _, info = fold_model(args.dataset, f, sp, args, log)
        log(f"fold {f}: best epoch {info.get('best_epoch')} valid {info.get('best_valid')} "
            f"seconds {info.get('seconds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
