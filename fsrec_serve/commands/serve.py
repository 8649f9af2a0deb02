"""``fsrec serve`` (start tritonserver, block until Ctrl-C/SIGTERM) and ``fsrec recommend``
(ask a running server for a user's recommendations)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start tritonserver on a model repository (blocks until Ctrl-C / SIGTERM)",
        description="Start tritonserver (from the nvidia-pytriton wheel) on a model repository in explicit "
        "model-control mode, wait until it is ready, and keep it running until Ctrl-C or SIGTERM. "
        "Extra tritonserver flags go after `--`.",
    )
    p.add_argument("--repository", default="model_repository", help="model repository folder (default: model_repository)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, env FSREC_HOST)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default 8000, env FSREC_HTTP_PORT; 0 = any free)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 8001, env FSREC_GRPC_PORT; 0 = any free)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (default 8002, env FSREC_METRICS_PORT; 0 = any free, -1 = off)")
    p.add_argument("--log-file", default=None, help="server log file (default: a temp folder, printed at start)")
    p.add_argument("--model-control", default="explicit", choices=["explicit", "poll", "none"],
                   help="Triton model control mode (default explicit: load/unload through the API)")
    p.add_argument("--load-model", action="append", default=None, metavar="NAME",
                   help="model to load at start (repeatable; default: every model in the repository)")
    p.add_argument("--admin-key", default=None,
                   help="restrict model-control/repository endpoints to requests with the header "
                   "fsrec-admin-key: KEY (default: env FSREC_ADMIN_KEY, else a generated key, see --admin-key-file)")
    p.add_argument("--admin-key-file", default=None,
                   help="admin key file: read when it exists, else a random key is generated into it (mode 0600). "
                   "Default: $FSREC_ADMIN_KEY_FILE or $XDG_STATE_HOME/fsrec/admin.key; clients on this machine "
                   "find it there")
    p.add_argument("--allow-unrestricted", action="store_true",
                   help="no admin key at all: model control open to anyone who reaches the port (needed to bind a "
                   "non-loopback --host without a key; private networks only)")
    p.add_argument("--restricted-api", action="append", default=None, metavar="GROUP",
                   help="endpoint group behind the admin key (repeatable; default: model-repository, trace, "
                   "logging, shared-memory)")
    p.add_argument("--execution-env", default=None,
                   help="Python environment of the python-backend model (default: this interpreter's sys.prefix)")
    p.add_argument("--store", default=None,
                   help="per-user state store of the fsrec_user / fsrec_events models: a SQLite path or "
                        "redis://host:port/db (default $FSREC_STORE, else the embedded SQLite file)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    p.add_argument("--watch-interval", type=float, default=2.0,
                   help="seconds between checks that reload a model whose python-backend stub died (0 = off)")
    p.add_argument("--tritonserver", default=None, help="tritonserver binary (default: the wheel's; env FSREC_TRITONSERVER)")
    p.add_argument("--tls-cert", default=None, help="PEM server certificate: TLS on the gRPC endpoint")
    p.add_argument("--tls-key", default=None, help="PEM server key for --tls-cert")
    p.add_argument("--tls-client-ca", default=None, help="PEM CA of client certificates (mutual TLS)")
    p.add_argument("--docker", action="store_true", help="run the official Triton container instead (GPU hosts)")
    p.add_argument("--print-docker", action="store_true",
                   help="print the official-container command for a GPU host and exit")
    p.add_argument("--gpus", default="all", help="--gpus value of the container command (default all)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra tritonserver flags")
    p.set_defaults(func=_serve)

    r = sub.add_parser(
        "recommend",
        help="ask a running server for recommendations for one history",
        description="Query a running tritonserver: raw item ids in (oldest first), raw item ids and scores out.",
    )
    r.add_argument("--url", default=None, help="server address (default 127.0.0.1 and the protocol's port)")
    r.add_argument("--protocol", choices=["grpc", "http"], default=None, help="default: from the url scheme, else grpc")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="+", metavar="ITEM", help="raw item ids, oldest first")
    who.add_argument("--user", default=None, metavar="ID",
                     help="a user id: the server reads the user's history and parameters from its store")
    r.add_argument("--recent", nargs="+", default=None, metavar="ITEM",
                   help="with --user: raw item ids not recorded yet (oldest first)")
    r.add_argument("--k", type=int, default=10, help="number of recommendations (default 10)")
    r.add_argument("--repository", default=None,
                   help="model repository the server serves: id map and limits are read from it")
    r.add_argument("--item-map", default=None, help="item_map.json (instead of --repository)")
    r.add_argument("--model", default=None, help="model name (default fsrec)")
    r.add_argument("--model-version", default="", help="model version (default: the server's latest)")
    r.add_argument("--on-unknown", choices=["drop", "error"], default="drop",
                   help="unknown ids: drop with a warning (default) or refuse")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default 10)")
    r.add_argument("--retries", type=int, default=2, help="retries when the server is unavailable (default 2)")
    r.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="extra request header (repeatable), e.g. a gateway's auth")
    r.add_argument("--ssl", action="store_true", help="TLS (grpc ssl channel / https)")
    r.add_argument("--root-certificates", default=None, help="CA bundle (PEM) for --ssl")
    r.add_argument("--private-key", default=None, help="client key (PEM) for mutual TLS")
    r.add_argument("--certificate-chain", default=None, help="client certificate (PEM) for mutual TLS")
    r.add_argument("--item-metadata", default=None, metavar="PATH",
                   help="item file (CSV/TSV/Parquet/JSON Lines, .gz read) with a title per item: titles are "
                   "printed next to the recommended ids (ids without a title print alone)")
    r.add_argument("--item-id-col", default="item_id", help="id column of --item-metadata (default item_id)")
    r.add_argument("--title-col", default="title", help="title column of --item-metadata (default title)")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_recommend)


def server_config(args):
    """The ServerConfig of `fsrec serve`'s arguments (an explicit key: --admin-key, or env
    FSREC_ADMIN_KEY; --admin-key-file is read, or generated when missing)."""
    from ..contract import DEFAULT_RESTRICTED_APIS
    from ..serving import ServerConfig
    from ..settings import ENV_ADMIN_KEY

    return ServerConfig(
        repository=Path(args.repository), host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, log_file=args.log_file, model_control=args.model_control,
        load_models=args.load_model, restricted_api_key=args.admin_key or os.environ.get(ENV_ADMIN_KEY) or None,
        admin_key_file=Path(args.admin_key_file) if args.admin_key_file else None,
        allow_unrestricted=args.allow_unrestricted,
        restricted_apis=tuple(args.restricted_api) if args.restricted_api else DEFAULT_RESTRICTED_APIS,
        execution_env_path=args.execution_env, startup_timeout=args.startup_timeout,
        extra_args=[a for a in (args.extra or []) if a != "--"], docker=args.docker, gpus=args.gpus,
        tritonserver=args.tritonserver, tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca, watch_interval_s=args.watch_interval, store=args.store,
    )  # fmt: skip


def _serve(args) -> int:
    from ..serving import docker_command_line, serve

    config = server_config(args)
    if args.print_docker:
        print(docker_command_line(config, with_key=not config.allow_unrestricted))
        return 0

    def interrupt(signum, frame):  # SIGTERM while starting: stop like Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        server = serve(config)

        def announce():
            print(f"tritonserver ready: http {server.url_http}  grpc {server.url_grpc}  metrics {server.url_metrics}")
            print(f"models: {', '.join(server.models)}  log: {server.log_path}")
            print(f"live repository (what tritonserver reads; `fsrec learn --repository` / `fsrec rollout "
                  f"--repository`): {server.runtime_repository}")
            if server.admin_key_file is not None:
                print(f"admin key (model control, repository): {server.admin_key_file} (mode 0600; clients on this "
                      "machine read it)")
            elif server.restricted_api_key:
                print("model control and repository endpoints need the header fsrec-admin-key")
            else:
                print("WARNING: no admin key: model control is open to anyone who reaches the port")
            print("press Ctrl-C (or send SIGTERM) to stop", flush=True)

        try:
            return server.serve_forever(announce=announce)
        except KeyboardInterrupt:  # between start-up and serve_forever's own handlers
            server.stop()
            return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def item_titles(path: str | Path, id_col: str = "item_id", title_col: str = "title") -> dict[str, str]:
    """raw item id -> title from an item metadata file (only the id and title columns are read).
    Raises DataNotFoundError / DataFormatError naming the file and the option to fix."""
    from ..data import read_item_metadata
    from ..data.spec import ItemMetadataSpec
    from ..errors import DataFormatError, DataNotFoundError

    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"--item-metadata {path}: no such file or directory; pass an existing item file "
                                f"with the columns {id_col!r} and {title_col!r}, or leave the option out")
    spec = ItemMetadataSpec(path=str(path), id_col=id_col, title_col=title_col, categories_col=None)
    try:
        return read_item_metadata(spec).titles
    except DataFormatError as e:
        raise DataFormatError(f"--item-metadata: {e} (the columns are chosen with --item-id-col / --title-col)") from e


def _recommend(args) -> int:
    from ..client import RecommenderClient
    from ..errors import ConfigError

    titles = item_titles(args.item_metadata, args.item_id_col, args.title_col) if args.item_metadata else None
    headers = {}
    for h in args.header:
        name, sep, value = h.partition("=")
        if not sep or not name:
            raise ConfigError(f"--header {h!r}: use NAME=VALUE")
        headers[name.strip()] = value
    with RecommenderClient(
        args.url, protocol=args.protocol, model_name=args.model, model_version=args.model_version,
        repository=args.repository, item_map=args.item_map, on_unknown=args.on_unknown, timeout_s=args.timeout,
        retries=args.retries, headers=headers or None, ssl=args.ssl, root_certificates=args.root_certificates,
        private_key=args.private_key, certificate_chain=args.certificate_chain,
    ) as client:  # fmt: skip
        if args.user is not None:
            rec = client.recommend_for_user(args.user, k=args.k, recent_items=args.recent)
        else:
            rec = client.recommend(args.history, k=args.k)
    if args.json:
        out = {"history": args.history, "items": rec.items, "scores": rec.scores,
               "model_version": rec.model_version, "dropped": list(rec.dropped), "source": rec.source}  # fmt: skip
        if titles is not None:
            out["titles"] = [titles.get(str(item)) for item in rec.items]
        print(json.dumps(out))
        return 0
    if client.item_map is None:
        print("note: no id map (pass --repository or --item-map): ids are the model's indices", file=sys.stderr)
    if args.user is not None:
        print(f"by user id ({rec.source}{': ' + ' '.join(args.recent) if args.recent else ''})")
    else:
        print(f"history: {' '.join(map(str, args.history))}")
    if rec.dropped:
        print(f"dropped (unknown): {' '.join(map(str, rec.dropped))}")
    print(f"model version: {rec.model_version}")
    print(f"{'rank':>4}  {'item':<12} {'score':>8}" + ("  title" if titles is not None else ""))
    for i, (item, score) in enumerate(zip(rec.items, rec.scores), 1):
        title = titles.get(str(item), "") if titles is not None else ""
        print(f"{i:>4}  {item!s:<12} {score:8.4f}" + (f"  {title}" if title else ""))
    return 0


def ranker_item_map(repository: str | Path, model: str = "fsrec"):
    """The id map of the ranker's newest version in ``repository`` (None when it has none)."""
    from ..client.validation import load_repository_info

    try:
        return load_repository_info(Path(repository), model, "")[0]
    except Exception as e:  # noqa: BLE001 - named in the error below
        from ..errors import ConfigError

        raise ConfigError(f"--repository {repository}: cannot read the item map of model {model!r} ({e}); "
                          "build the repository first (fsrec repository / fsrec pipeline)") from None
