"""``fsrec rollout`` (a new model version without dropping requests) and ``fsrec models``
(repository index, load / pin versions, unload) against a running, key-protected Triton.

Argument parsing only: the work is done by :func:`fsrec_serve.operations.rollout.rollout`,
:func:`~fsrec_serve.operations.rollout.pin_versions` and
:class:`~fsrec_serve.operations.control.ModelControl`.
"""

from __future__ import annotations

import argparse
import json


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="server address (default 127.0.0.1 and the protocol's port: 8000 http / 8001 grpc)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="http", help="default http")
    p.add_argument("--model", default=None, help="Triton model name (default fsrec, env FSREC_MODEL_NAME)")
    p.add_argument("--admin-key", default=None,
                   help="key for the restricted model-control endpoints (default: env FSREC_ADMIN_KEY, else the "
                   "key file `fsrec serve` generated on this machine: $FSREC_ADMIN_KEY_FILE or $XDG_STATE_HOME/fsrec/admin.key)")
    p.add_argument("--admin-key-file", default=None, help="read the admin key from this file")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    p.add_argument("--control-timeout", type=float, default=300.0,
                   help="seconds a load / unload may take (default 300)")


def add_parsers(sub) -> None:
    r = sub.add_parser(
        "rollout",
        help="roll a new model version out on a running server (guard, candidate, smoke, swap, rollback)",
        description="Export directory -> new version N of the served model: accuracy guard against the serving "
        "version (with --guard-dataset), candidate load through the model-control API, smoke check against ONNX "
        "Runtime, swap with version_policy specific [N] (the old version answers until N is ready), verify; "
        "any failure keeps or restores the old version. Prints the report as JSON.",
    )
    r.add_argument("export_dir", help="export directory (model.onnx, fsrec_meta.json, item_map.json)")
    r.add_argument("--repository", required=True,
                   help="the model repository the server reads (--model-repository of tritonserver)")
    _add_server_args(r)
    r.add_argument("--version", type=int, default=None, help="version number (default: newest + 1)")
    r.add_argument("--guard-dataset", default=None,
                   help="data set for the accuracy guard (ml-100k, beauty): validation examples of its "
                   "leave-one-out split; omit only with --no-guard")
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

    m = sub.add_parser("models", help="model control of a running server: list, load (pin versions), unload")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    ls = msub.add_parser("list", help="the repository index: models, versions, state, reason")
    _add_server_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_list)
    ld = msub.add_parser("load", help="load a model; with --version, serve exactly those versions (rollback)")
    _add_server_args(ld)
    ld.add_argument("--version", type=int, action="append", default=None,
                    help="version to serve (repeatable); written to config.pbtxt when --repository is given")
    ld.add_argument("--repository", default=None, help="the model repository the server reads")
    ld.set_defaults(func=_load)
    ul = msub.add_parser("unload", help="unload a model (every version)")
    _add_server_args(ul)
    ul.set_defaults(func=_unload)


def _control(args):
    from ..operations.control import ModelControl
    from ..settings import read_admin_key_file

    key = read_admin_key_file(args.admin_key_file) if args.admin_key_file else args.admin_key
    return ModelControl(args.url, protocol=args.protocol, admin_key=key, model_name=args.model,
                        timeout_s=args.timeout, control_timeout_s=args.control_timeout)


def _rollout(args) -> int:
    from ..errors import ConfigError, RolloutError
    from ..operations.rollout import RolloutConfig, report_json, rollout

    if not args.no_guard and not args.guard_dataset:
        raise ConfigError("the accuracy guard needs validation data: pass --guard-dataset ml-100k (or beauty), "
                          "or --no-guard to skip it")
    try:
        overrides = json.loads(args.config_override) if args.config_override else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config-override is not valid JSON: {e}") from None
    examples = None
    if not args.no_guard:
        from ..data import SplitConfig, load_dataset, make_splits
        from ..settings import get_settings

        data = load_dataset(args.guard_dataset, get_settings(data_dir=args.data_dir).data_dir)
        examples = make_splits(data, SplitConfig()).loo_valid()[: args.guard_users]
    cfg = RolloutConfig(model_name=args.model, version=args.version, max_ndcg_drop=args.max_ndcg_drop,
                        guard_users=args.guard_users, smoke_users=args.smoke_users, config_overrides=overrides,
                        keep_previous=args.keep_previous)
    with _control(args) as control:
        try:
            report = rollout(args.export_dir, args.repository, control, cfg, valid_examples=examples)
        except RolloutError as e:
            rep = getattr(e, "report", None)
            if rep is not None:
                print(report_json(rep))
            raise
    print(report_json(report))
    return 0


def _list(args) -> int:
    with _control(args) as control:
        rows = control.index()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"{'model':<24} {'version':>7}  {'state':<12} reason")
    for r in rows:
        print(f"{r.name:<24} {'' if r.version is None else r.version:>7}  {r.state:<12} {r.reason}")
    return 0


def _load(args) -> int:
    from ..operations.rollout import pin_versions

    with _control(args) as control:
        if args.version and args.repository:
            ready = pin_versions(args.repository, control, args.version)
        elif args.version:
            ready = control.load_versions(args.version)
        else:
            control.load()
            ready = control.ready_versions()
        name = control.model_name
    print(json.dumps({"model": name, "ready_versions": ready}))
    return 0


def _unload(args) -> int:
    with _control(args) as control:
        control.unload()
        name = control.model_name
    print(json.dumps({"model": name, "unloaded": True}))
    return 0
