"""``fsrec models`` (repository index, load / pin versions, unload) against a running,
key-protected Triton, and the server options it shares with ``fsrec rollout``.

Argument parsing only: the work is done by :func:`~fsrec_serve.operations.rollout.pin_versions`
and :class:`~fsrec_serve.operations.control.ModelControl`.
"""

from __future__ import annotations

import argparse
import json


def add_server_args(p: argparse.ArgumentParser) -> None:
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
    m = sub.add_parser("models", help="model control of a running server: list, load (pin versions), unload")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    ls = msub.add_parser("list", help="the repository index: models, versions, state, reason")
    add_server_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_list)
    ld = msub.add_parser("load", help="load a model; with --version, serve exactly those versions (rollback)")
    add_server_args(ld)
    ld.add_argument("--version", type=int, action="append", default=None,
                    help="version to serve (repeatable); written to config.pbtxt when --repository is given")
    ld.add_argument("--repository", default=None, help="the model repository the server reads")
    ld.set_defaults(func=_load)
    ul = msub.add_parser("unload", help="unload a model (every version)")
    add_server_args(ul)
    ul.set_defaults(func=_unload)


def model_control(args):
    from ..operations.control import ModelControl
    from ..settings import read_admin_key_file

    key = read_admin_key_file(args.admin_key_file) if args.admin_key_file else args.admin_key
    return ModelControl(args.url, protocol=args.protocol, admin_key=key, model_name=args.model,
                        timeout_s=args.timeout, control_timeout_s=args.control_timeout)


def _list(args) -> int:
    with model_control(args) as control:
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

    with model_control(args) as control:
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
    with model_control(args) as control:
        control.unload()
        name = control.model_name
    print(json.dumps({"model": name, "unloaded": True}))
    return 0
