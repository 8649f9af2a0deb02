"""``fsrec rollout``: a new model version on a running, key-protected Triton without dropping
requests (guard, candidate, smoke, swap, rollback): :func:`fsrec_serve.operations.rollout.rollout`.
Prints the report as JSON."""

from __future__ import annotations

import json

from .ops import add_server_args, model_control


def add_parsers(sub) -> None:
    r = sub.add_parser(
        "rollout",
        help="roll a new model version out on a running server (guard, candidate, smoke, swap, rollback)",
        description="Export directory -> new version N of the served model: accuracy guard against the serving "
        "version (on the split recorded with the export), candidate load through the model-control API, smoke check against ONNX "
        "Runtime, swap with version_policy specific [N] (the old version answers until N is ready), verify; "
        "any failure keeps or restores the old version. Prints the report as JSON.",
    )
    r.add_argument("export_dir", help="export directory (model.onnx, fsrec_meta.json, item_map.json)")
    r.add_argument("--repository", required=True,
                   help="the model repository the server reads (--model-repository of tritonserver)")
    add_server_args(r)
    r.add_argument("--version", type=int, default=None, help="version number (default: newest + 1)")
    r.add_argument("--guard-dataset", default=None,
                   help="data set for the accuracy guard (ml-100k, beauty, a data-spec file): validation "
                   "examples of the split recorded with the export (default: its recorded data set too)")
    r.add_argument("--data-dir", default=None, help="folder of the data sets (env FSREC_DATA_DIR)")
    r.add_argument("--guard-users", type=int, default=1000, help="validation examples for the guard (default 1000)")
    r.add_argument("--max-ndcg-drop", type=float, default=0.02,
                   help="largest relative NDCG@10 drop vs the serving version (default 0.02)")
    r.add_argument("--no-guard", action="store_true", help="skip the accuracy guard (smoke checks still run)")
    r.add_argument("--smoke-users", type=int, default=16, help="histories of the smoke checks (default 16)")
    r.add_argument("--config-override", default=None, metavar="JSON",
                   help='top-level config fields changed with this version, e.g. '
                   '\'{"dynamic_batching": {"max_queue_delay_microseconds": 200}}\'')
    r.add_argument("--keep-previous", action="store_true",
                   help="keep the previous version loaded beside the new one (reachable by version)")
    r.set_defaults(func=_rollout)


def _rollout(args) -> int:
    from ..errors import ConfigError, RolloutError
    from ..operations.rollout import RolloutConfig, guard_examples, report_json, rollout

    try:
        overrides = json.loads(args.config_override) if args.config_override else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config-override is not valid JSON: {e}") from None
    examples = None if args.no_guard else guard_examples(args.export_dir, args.guard_users,
                                                         dataset=args.guard_dataset, data_dir=args.data_dir)
    cfg = RolloutConfig(model_name=args.model, version=args.version, max_ndcg_drop=args.max_ndcg_drop,
                        guard_users=args.guard_users, smoke_users=args.smoke_users, config_overrides=overrides,
                        keep_previous=args.keep_previous)
    with model_control(args) as control:
        try:
            report = rollout(args.export_dir, args.repository, control, cfg, valid_examples=examples)
        except RolloutError as e:
            if getattr(e, "report", None) is not None:
                print(report_json(e.report))
            raise
    print(report_json(report))
    return 0
