"""``fsrec serve``: start tritonserver, block until Ctrl-C/SIGTERM (:func:`fsrec_serve.serving.serve`)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from ..contract import DEFAULT_REPOSITORY


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start tritonserver on a model repository (blocks until Ctrl-C / SIGTERM)",
        description="Start tritonserver (from the nvidia-pytriton wheel) on a model repository in explicit "
        "model-control mode, wait until it is ready, and keep it running until Ctrl-C or SIGTERM. "
        "Extra tritonserver flags go after `--`.",
    )
    p.add_argument("--repository", default=DEFAULT_REPOSITORY,
                   help=f"model repository root (default: {DEFAULT_REPOSITORY}; model_repository/gpu and "
                   "model_repository/gpu-python are the other targets' roots)")
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


def ranker_item_map(repository: str | Path, model: str = "fsrec"):
    """The id map of the ranker's newest version in ``repository`` (None when it has none)."""
    from ..client.validation import load_repository_info

    try:
        return load_repository_info(Path(repository), model, "")[0]
    except Exception as e:  # noqa: BLE001 - named in the error below
        from ..errors import ConfigError

        raise ConfigError(f"--repository {repository}: cannot read the item map of model {model!r} ({e}); "
                          "build the repository first (fsrec repository / fsrec pipeline)") from None
