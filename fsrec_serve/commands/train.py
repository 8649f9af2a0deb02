"""``fsrec train``: pretrain a model on a data set (``fsrec evaluate`` is in evaluate.py). The model
folder records its data source and split (``fsrec_run.json``, a ``RunRecord``), so evaluate,
export, quantize and adapt find the data again without being told."""

from __future__ import annotations

import argparse
import json


def _add_data(p: argparse.ArgumentParser) -> None:
    from ..data.args import add_data_arguments

    p.add_argument("--dataset", default=None, help="ml-100k or beauty (or your own log: --data)")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the cold-user/cold-item split")
    p.add_argument("--full-loo", action="store_true",
                   help="leave-one-out over EVERY user (no cold-start users or items held out)")
    add_data_arguments(p)


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train", help="pretrain the sequential recommender on a data set",
        description="Pretrain on the warm users' leave-one-out training sequences, early-stopped on "
        "the validation item's NDCG@10. Unset options take the settings fitted to the log's "
        "statistics (fsrec_serve.training.fitted_config); each is printed with its reason.",
    )
    _add_data(t)
    t.add_argument("--objective", choices=["causal", "cloze"], default="causal",
                   help="causal = SASRec-style next item (default: it wins the quality benchmark), "
                        "cloze = BERT4Rec-style masked items")
    t.add_argument("--output-dir", required=True, help="where the checkpoint and metrics.jsonl go")
    t.add_argument("--seed", type=int, default=None, help="training seed (torch, numpy, random)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs")
    t.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience (evaluations)")
    t.add_argument("--max-seq-len", type=int, default=None, help="longest history the model reads")
    t.add_argument("--hidden-size", type=int, default=None, help="model width")
    t.add_argument("--layers", type=int, default=None, help="transformer blocks")
    t.add_argument("--dropout", type=float, default=None, help="hidden and attention dropout")
    t.add_argument("--mask-prob", type=float, default=None, help="cloze masking probability")
    t.add_argument("--no-features", action="store_true", help="do not use item side features")
    t.add_argument("--adversarial", type=float, default=None, metavar="EPS",
                   help="adversarial training: item embeddings moved by EPS x their norm along the "
                        "loss gradient, that loss added (e.g. 0.1; default off)")
    t.add_argument("--device", default=None, help="cpu, cuda or auto")
    t.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--max-train-seconds", type=float, default=None, help="wall-clock budget")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)


def _train(args) -> int:
    from ..data import load_interactions, make_splits, require_data_source
    from ..data.args import split_config_from_args
    from ..training.pretrain import default_model_config, default_train_config, pretrain

    spec = require_data_source(args, "fsrec train")
    model_over = {k: v for k, v in {
        "max_seq_len": args.max_seq_len, "hidden_size": args.hidden_size,
        "num_hidden_layers": args.layers, "mask_prob": args.mask_prob,
        "hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout,
    }.items() if v is not None}
    if args.no_features:
        model_over["num_item_features"] = 0
    train_over = {k: v for k, v in {
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "patience": args.patience, "device": args.device,
        "num_threads": args.num_threads, "max_train_seconds": args.max_train_seconds,
        "adversarial_eps": args.adversarial,
    }.items() if v is not None}
    train_over["output_dir"] = args.output_dir
    train_over["progress"] = not args.no_progress
    splits = make_splits(load_interactions(spec), split_config_from_args(args))  # before any output is written
    _print_fitted(splits, args.objective, {**model_over, **train_over})
    res = pretrain(splits, default_model_config(splits, args.objective, **model_over),
                   default_train_config(splits, args.objective, **train_over))
    print(json.dumps({
        "output_dir": str(res.output_dir), "split": splits.summary(), "best_epoch": res.best_epoch,
        "best_valid": res.best_valid, "epochs_run": len(res.history), "seconds": round(res.seconds, 1),
        "seconds_to_best": round(res.seconds_to_best, 1), "peak_mb": round(res.peak_mb, 1),
    }, indent=2))
    return 0


def _print_fitted(splits, objective: str, given: dict) -> None:
    """Print (stderr) the log's statistics and every setting fitted to them, with its reason."""
    import sys

    from ..training import data_stats, recommended_config

    stats = data_stats(splits.loo_train(), len(splits.item_map))
    print(f"fsrec train: {splits.name}: {stats.describe()}", file=sys.stderr)
    for line in recommended_config(stats, objective).reasons:
        name = {"dropout": "hidden_dropout_prob"}.get(line.split(" ", 1)[0], line.split(" ", 1)[0])
        note = f"  (overridden: {given[name]})" if name in given else ""
        print(f"  {line}{note}", file=sys.stderr)
