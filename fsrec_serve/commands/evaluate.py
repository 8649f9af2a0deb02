"""``fsrec evaluate``: evaluate a saved model on the split recorded with it
(:func:`fsrec_serve.evaluation.protocols.evaluate_checkpoint`); prints the metrics as JSON."""

from __future__ import annotations

import json


def add_parsers(sub) -> None:
    from ..data.args import add_data_arguments

    e = sub.add_parser(
        "evaluate", help="evaluate a saved model (leave-one-out, full ranking)",
        description="Full-ranking HR/NDCG/MRR@K of the leave-one-out item with the user's history "
        "excluded (or --sampled-negatives 100); RMSE/MAE of the rating head where ratings exist. "
        "The split recorded with the model is rebuilt unless --full-loo/--split-seed are given.",
    )
    e.add_argument("--model", required=True, help="model folder (the --output-dir of fsrec train)")
    e.add_argument("--dataset", default=None, help="ml-100k or beauty (default: the model's data)")
    e.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")
    e.add_argument("--split-seed", type=int, default=None, help="override the recorded split seed")
    e.add_argument("--full-loo", action="store_true", help="evaluate over every user")
    e.add_argument("--split", choices=["test", "valid"], default="test", help="which held-out item")
    e.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="cut-offs K")
    e.add_argument("--sampled-negatives", type=int, default=None,
                   help="rank against N sampled negatives (100 = the sampled protocol)")
    e.add_argument("--popularity", action="store_true", help="also report the popularity baseline")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    add_data_arguments(e)
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from ..data import data_source_from_args
    from ..data.args import split_config_from_args
    from ..evaluation.protocols import evaluate_checkpoint

    split_config = split_config_from_args(args) if (args.full_loo or args.split_seed is not None) else None
    dataset = data_source_from_args(args) if (args.data or args.dataset) else None  # default: the record's
    out = evaluate_checkpoint(
        args.model, dataset=dataset, data_dir=args.data_dir, split=args.split,
        split_config=split_config, ks=tuple(args.ks), sampled_negatives=args.sampled_negatives,
        popularity=args.popularity, device=args.device,
    )
    print(json.dumps(out, indent=2))
    return 0
