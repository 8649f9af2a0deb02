"""``fsrec ensemble``: 2-3 export directories -> one served ensemble model (one Triton call per
request, same I/O as the ranker): :func:`exporters.ensemble_repository.build_ensemble_repository`.
Prints what was written as JSON."""

from __future__ import annotations

import json


def add_parsers(sub) -> None:
    from exporters.triton_python.ensemble_model import DEFAULT_RRF_K, FUSIONS

    e = sub.add_parser(
        "ensemble",
        help="serve 2-3 exported models (seeds and/or objectives) fused into one ranked list",
        description="Export directories sharing one item map -> <repository>/<model>/: one Triton python model "
        "that runs every member's graph in-process and fuses their scores (mean-logprob: the mean of the "
        "members' log-softmax; rrf: reciprocal-rank fusion). Same input/output as the single ranker: the "
        "client asks for it by model name.",
    )
    e.add_argument("--member", action="append", required=True, metavar="EXPORT_DIR",
                   help="export directory of one member (model.onnx, item_map.json, fsrec_meta.json); 2 or 3 times")
    e.add_argument("--repository", required=True, help="repository root to write into (e.g. model_repository/cpu)")
    e.add_argument("--fusion", choices=FUSIONS, default=FUSIONS[0], help=f"fusion rule (default {FUSIONS[0]})")
    e.add_argument("--rrf-k", type=float, default=DEFAULT_RRF_K, help=f"rrf's constant (default {DEFAULT_RRF_K:g})")
    e.add_argument("--model-name", default=None, help="Triton model name (default fsrec_ensemble)")
    e.add_argument("--version", type=int, default=None, help="version number (default: newest + 1)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing version")
    e.set_defaults(func=_ensemble)


def _ensemble(args) -> int:
    from exporters.ensemble_repository import (
        DEFAULT_ENSEMBLE_NAME,
        build_ensemble_repository,
    )

    v = build_ensemble_repository(args.repository, args.member, fusion=args.fusion, rrf_k=args.rrf_k,
                                  model_name=args.model_name or DEFAULT_ENSEMBLE_NAME, version=args.version,
                                  overwrite=args.overwrite)
    print(json.dumps({"model_dir": str(v.model_dir), "version": v.version, "fusion": v.fusion,
                      "members": [str(m) for m in v.members]}, indent=2))
    return 0
