"""The official-container command for a GPU host (``docker run ... tritonserver``), as argv or
as a shell line to print (``fsrec serve --print-docker``) with the admin key left to the shell."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from ..settings import get_settings
from .config import ServerConfig
from .constants import CONTAINER_REPOSITORY, TRITON_CONTAINER_IMAGE
from .flags import list_models, triton_args
from .ports import ServerPorts

KEY_PLACEHOLDER = "ADMIN_KEY_PLACEHOLDER"  # replaced by "$FSREC_ADMIN_KEY" in the printed line


def docker_command(config: ServerConfig | str | Path, *, image: str = TRITON_CONTAINER_IMAGE,
                   shm_size: str = "1g", **overrides: Any) -> list[str]:
    """argv of the official container serving ``config.repository`` (mounted read-only at
    /models). Use the ``gpu`` repository target there: the ``cpu`` target's python model points
    at a host virtualenv. Ports are published on ``config.host`` (default 127.0.0.1); inside the
    container Triton listens on 0.0.0.0 with its default ports."""
    cfg = ServerConfig.of(config, **overrides)
    s = get_settings()
    host = cfg.host or s.host
    hp = s.http_port if cfg.http_port is None else cfg.http_port
    gp = s.grpc_port if cfg.grpc_port is None else cfg.grpc_port
    mp = s.metrics_port if cfg.metrics_port is None else cfg.metrics_port
    repo = Path(cfg.repository).resolve()
    models = list(cfg.load_models) if cfg.load_models is not None else (list_models(repo) or [s.model_name])
    cmd = ["docker", "run", "--rm", "--init"]
    if cfg.gpus:
        cmd += ["--gpus", cfg.gpus]
    cmd += [f"--shm-size={shm_size}", "-p", f"{host}:{hp}:{DEFAULT_HTTP_PORT}", "-p", f"{host}:{gp}:{DEFAULT_GRPC_PORT}"]
    if mp and mp > 0:
        cmd += ["-p", f"{host}:{mp}:{DEFAULT_METRICS_PORT}"]
    cmd += ["-v", f"{repo}:{CONTAINER_REPOSITORY}:ro", image, "tritonserver"]
    cmd += triton_args(
        CONTAINER_REPOSITORY, host="0.0.0.0",
        ports=ServerPorts(DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT if mp and mp > 0 else 0),
        model_control=cfg.model_control, models=models, restricted_api_key=cfg.restricted_api_key,
        restricted_apis=cfg.restricted_apis,
    )  # fmt: skip
    return cmd + list(cfg.extra_args)


def docker_command_line(config: ServerConfig, *, with_key: bool) -> str:
    """The container command as one shell line; the admin key (``with_key``) is read by the shell
    from ``$FSREC_ADMIN_KEY`` and never printed."""
    import dataclasses

    cfg = dataclasses.replace(config, restricted_api_key=KEY_PLACEHOLDER if with_key else None)
    return shlex.join(docker_command(cfg)).replace(KEY_PLACEHOLDER, '"$FSREC_ADMIN_KEY"')
