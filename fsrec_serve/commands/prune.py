"""``fsrec prune``: pruned candidates of a trained model, exported and guarded like quantized ones
(:func:`exporters.prune_select.prune_and_guard`); prints the choice and every guard result as JSON.
The held-out users come from the model folder's run record (``fsrec_serve.data.RunRecord``)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parsers(sub) -> None:
    from exporters.prune import DEFAULT_HALF_LIFE

    p = sub.add_parser(
        "prune", help="prune a trained model (catalogue, attention heads, FFN neurons) under the export guard",
        description="Builds each candidate from the FULL trained model (the checkpoint is never changed, so an "
        "item pruned now comes back on the next export): catalogue-<n> serves the n items of highest "
        "recency-weighted popularity (its item_map.json lists them only; clients drop the other ids), heads-<n> "
        "keeps n attention heads, ffn-<n> keeps n feed-forward neurons per block (both ranked by gradient "
        "importance, then a short recovery fine-tune); steps combine with '+' (heads-2+catalogue-4000). Each "
        "candidate is exported to <output>/<name> and guarded against the FP32 export of the full model "
        "(NDCG@10 drop <= 1 % relative on the validation item, top-10 overlap >= 0.9, batch invariance); the "
        "fastest that passes and is --min-speedup times faster is recorded in guard_decision.json, else FP32.",
    )
    p.add_argument("model", help="model folder (the --output-dir of fsrec train)")
    p.add_argument("--output", required=True, help="folder of the candidate exports (<output>/<name>)")
    p.add_argument("--candidates", nargs="+", required=True, metavar="NAME",
                   help="candidate names: catalogue-<n>, heads-<n>, ffn-<n>, or steps joined with '+'")
    p.add_argument("--reference", default=None,
                   help="FP32 export of the full model (fsrec export); default: exported to <output>/reference")
    p.add_argument("--half-life", type=float, default=DEFAULT_HALF_LIFE,
                   help=f"catalogue: popularity half-life in interactions from a user's newest (default "
                   f"{DEFAULT_HALF_LIFE:g}; inf = plain counts)")
    p.add_argument("--recover-epochs", type=int, default=5, help="heads/ffn: recovery fine-tune epochs (0 = none)")
    p.add_argument("--max-ndcg-drop", type=float, default=0.01, help="guard: relative NDCG@10 drop")
    p.add_argument("--min-top10-overlap", type=float, default=0.9, help="guard: top-10 overlap")
    p.add_argument("--min-speedup", type=float, default=1.05, help="serve a candidate only this much faster")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the timing and the guard")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")
    p.set_defaults(func=_prune)


def _prune(args) -> int:
    import dataclasses

    from exporters.export import export_onnx
    from exporters.prune_select import PruneOptions, parse_candidate, prune_and_guard

    from ..data import RunRecord
    from ..errors import ConfigError
    from ..model import FsRecModel
    from ..settings import get_settings
    from ..training import TrainConfig
    from ..training.pretrain import TRAIN_CONFIG_FILE

    for name in args.candidates:
        parse_candidate(name)  # a bad name fails before any work
    if args.recover_epochs < 0 or args.half_life <= 0:
        raise ConfigError("--recover-epochs must be >= 0 and --half-life > 0")
    model_dir, out = Path(args.model), Path(args.output)
    if not (model_dir / "config.json").exists():
        raise ConfigError(f"{model_dir} holds no model (config.json missing): pass the --output-dir of `fsrec train`")
    record = RunRecord.load(model_dir)
    splits = record.splits(get_settings(data_dir=args.data_dir).data_dir)
    model = FsRecModel.from_pretrained(model_dir).eval()
    reference = Path(args.reference) if args.reference else out / "reference"
    if args.reference is None:
        export_onnx(model, reference, max_top_k=min(100, int(model.config.num_items)), source=str(model_dir),
                    extra=record.source_dict())
    tc_path = model_dir / TRAIN_CONFIG_FILE
    tc = TrainConfig.load(tc_path) if tc_path.exists() else TrainConfig()
    options = PruneOptions(half_life=args.half_life, recover_epochs=args.recover_epochs,
                           train_config=dataclasses.replace(tc, output_dir=None, progress=False))
    report = prune_and_guard(model, splits, reference, args.candidates, out, options=options,
                             max_ndcg_drop=args.max_ndcg_drop, min_top10_overlap=args.min_top10_overlap,
                             min_speedup=args.min_speedup, batch_size=args.batch_size)
    print(json.dumps(report.to_dict(), indent=2, default=str))
    return 0
