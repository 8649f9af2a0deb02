"""``serve(config)``: start a real ``tritonserver`` on a model repository and wait until it
and its models are ready; returns the :class:`~.process.TritonServer` handle."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ServingError
from ..settings import get_settings
from .config import ServerConfig, resolve_admin_key
from .docker import docker_command
from .flags import list_models, tls_args, triton_args
from .ports import ServerPorts, check_ports, resolve_ports
from .process import TritonServer
from .runtime import flip_symlink, materialize
from .triton_install import find_triton, library_path, prepare_backends

log = logging.getLogger(__name__)

def _models(repo: Path, cfg: ServerConfig) -> list[str]:
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist; build it with `fsrec export` (exporters.build_model_repository)")
    available = list_models(repo)
    if not available:
        raise ConfigError(f"model repository {repo} holds no model (no <model>/config.pbtxt); build it with `fsrec export`")
    models = list(cfg.load_models) if cfg.load_models is not None else available
    missing = [m for m in models if m not in available]
    if missing:
        raise ConfigError(f"model(s) {missing} are not in {repo} (it has: {', '.join(available)})")
    return available if cfg.model_control == "none" else models


def serve(config: ServerConfig | str | Path, **overrides: Any) -> TritonServer:
    """Start tritonserver as ``config`` says (a :class:`ServerConfig`, or a repository path with
    ServerConfig fields as ``overrides``) and, by default, wait until it is ready.

    Ports: ``None`` = settings, ``0`` = any free port, ``metrics_port=-1`` = metrics off. The
    admin key follows :mod:`.config` (generated key file on loopback; a non-loopback bind needs a
    key or ``allow_unrestricted``). ``docker=True`` runs the official container instead.

    Raises ServerStartError (port in use, model failed to load, timeout) with the server's own
    log lines, ConfigError for a bad config, TritonNotFoundError if tritonserver is missing.
    """
    cfg = ServerConfig.of(config, **overrides)
    repo = Path(cfg.repository).expanduser().resolve()
    models = _models(repo, cfg)
    tls = tls_args(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
    if tls and cfg.docker:
        raise ConfigError("TLS files are host paths: for the container, mount them and pass the --grpc-*-cert flags in extra_args")
    host = cfg.host or get_settings().host
    ports = resolve_ports(host, cfg.http_port, cfg.grpc_port, cfg.metrics_port)
    check_ports(host, ports)
    admin = resolve_admin_key(cfg, host)

    run_dir = Path(tempfile.mkdtemp(prefix="fsrec-triton-"))
    log_path = Path(cfg.log_file).expanduser().resolve() if cfg.log_file else run_dir / "tritonserver.log"
    common = dict(
        host=host, ports=ports, log_path=log_path, repository=repo, models=models,
        restricted_api_key=admin.key, restricted_apis=cfg.restricted_apis if admin.key else (),
        startup_timeout=cfg.startup_timeout, stop_timeout=cfg.stop_timeout, admin_key_file=admin.path,
        watch_interval_s=cfg.watch_interval_s, run_dir=run_dir,
    )  # fmt: skip
    if cfg.docker:
        cmd = docker_command(cfg, host=host, http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics,
                             load_models=models, restricted_api_key=admin.key, extra_args=tls + list(cfg.extra_args))
        if shutil.which("docker") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise ServingError("docker is not installed on this machine; run this on the GPU host instead:\n  "
                               + shlex.join(cmd).replace(admin.key or "\0", "***"))
        server = TritonServer(cmd, dict(os.environ), runtime_repository=repo, kind="docker", **common)
    else:
        server = _local_server(cfg, repo, models, host, ports, admin.key, tls, common)
    server.start()
    if cfg.wait:
        try:
            server.wait_ready()
        except BaseException:  # Ctrl-C / SIGTERM during start-up: no orphan server
            server.stop()
            raise
    return server


def _local_server(cfg: ServerConfig, repo: Path, models: list[str], host: str, ports: ServerPorts,
                  key: str | None, tls: list[str], common: dict) -> TritonServer:
    install = find_triton(cfg.tritonserver)
    backends = prepare_backends(install)
    env_path = str(Path(cfg.execution_env_path).resolve()) if cfg.execution_env_path else sys.prefix
    run_dir: Path = common["run_dir"]
    runtime = repo
    if cfg.materialize:
        # <run_dir>/model_repository is a symlink to a generation folder, so that
        # refresh_repository() can publish new versions atomically while the server runs
        try:
            gen = materialize(repo, env_path, run_dir / "repository-0", None)
            runtime = run_dir / "model_repository"
            flip_symlink(runtime, gen)
        except Exception:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    cmd = [str(install.binary), f"--backend-directory={backends}"]
    cmd += triton_args(
        runtime, host=host, ports=ports, model_control=cfg.model_control, models=models, restricted_api_key=key,
        restricted_apis=cfg.restricted_apis, log_verbose=cfg.log_verbose, exit_timeout_s=cfg.exit_timeout_s,
    ) + tls + list(cfg.extra_args)  # fmt: skip
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = library_path(install)
    if cfg.store:  # read by the fsrec_user / fsrec_events models inside the python stubs
        env["FSREC_STORE"] = str(cfg.store)
    server = TritonServer(cmd, env, runtime_repository=runtime, kind="local", **common)
    server.execution_env_path = env_path if cfg.materialize else None
    return server
