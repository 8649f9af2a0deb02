"""``ServerConfig``: everything ``serve()`` and ``fsrec serve`` need, as one typed object, and
the admin-key policy.

Admin key (Triton's restricted endpoints: model control, repository, trace, logging):

- a key given (``restricted_api_key``) is used as is;
- no key on a loopback address: a random key is generated once, written to a file only its
  owner can read (mode 0600; ``admin_key_file``, default ``settings.admin_key_path()``, i.e.
  ``$XDG_STATE_HOME/fsrec/admin.key``) and reused by later starts; clients on the same machine
  (``RecommenderClient``, ``fsrec models``, ``fsrec rollout``) find it there on their own;
- no key on any other address: refused, unless ``allow_unrestricted`` (then model control is
  open to anyone who reaches the port), as ``docker/entrypoint-serving.sh`` does; an explicit
  ``admin_key_file`` counts as a key (read, or generated into it when missing).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..contract import DEFAULT_RESTRICTED_APIS
from ..errors import ConfigError
from ..settings import admin_key_path, read_admin_key_file
from .ports import is_loopback

MODEL_CONTROL_MODES = ("explicit", "poll", "none")
ALLOW_UNRESTRICTED_FLAG = "--allow-unrestricted"  # the `fsrec serve` opt-out of the admin key


@dataclass(frozen=True)
class ServerConfig:
    repository: Path  # model repository folder (<model>/config.pbtxt + version folders)
    host: str | None = None  # bind address; None = settings (127.0.0.1, env FSREC_HOST)
    http_port: int | None = None  # None = settings (8000, env FSREC_HTTP_PORT); 0 = any free port
    grpc_port: int | None = None  # None = settings (8001, env FSREC_GRPC_PORT); 0 = any free port
    metrics_port: int | None = None  # None = settings (8002); 0 = any free port; -1 = metrics off
    log_file: Path | None = None  # the server's log; None = tritonserver.log in the run's temp folder
    model_control: str = "explicit"  # Triton model control: explicit (load/unload via API), poll, none
    load_models: Sequence[str] | None = None  # models loaded at start; None = every model of the repository
    restricted_api_key: str | None = None  # admin key; None = the generated key file (loopback only)
    admin_key_file: Path | None = None  # where the generated key is kept; None = settings.admin_key_path()
    allow_unrestricted: bool = False  # no admin key at all: model control open to anyone who reaches the port
    restricted_apis: Sequence[str] = DEFAULT_RESTRICTED_APIS  # endpoint groups behind the admin key
    execution_env_path: Path | None = None  # python env of the python-backend model; None = sys.prefix
    startup_timeout: float = 120.0  # seconds to wait until the server and its models are ready
    stop_timeout: float = 20.0  # seconds between SIGTERM and SIGKILL on stop
    extra_args: Sequence[str] = ()  # more tritonserver flags, appended as given
    docker: bool = False  # run the official container instead of the wheel's binary (GPU hosts)
    gpus: str | None = "all"  # --gpus of the container command (None = no GPUs)
    tritonserver: Path | None = None  # tritonserver binary; None = the wheel's (env FSREC_TRITONSERVER)
    log_verbose: int = 0  # tritonserver --log-verbose level
    exit_timeout_s: int = 5  # on stop, seconds tritonserver waits for in-flight requests
    tls_cert_file: Path | None = None  # PEM server certificate: TLS on the gRPC endpoint
    tls_key_file: Path | None = None  # PEM key of tls_cert_file
    tls_client_ca_file: Path | None = None  # PEM CA of client certificates: mutual TLS
    materialize: bool = True  # serve a runtime copy with EXECUTION_ENV_PATH (False: the folder as is)
    wait: bool = True  # serve() returns only once the server and its models are ready
    # per-user state store the fsrec_user / fsrec_events models use (sqlite path or file URL,
    # redis://...); None = $FSREC_STORE, else the embedded SQLite file in the state folder
    store: str | None = None
    watch_interval_s: float = 2.0  # serve_forever: check models every N s, reload unready ones (0 = off)

    def __post_init__(self):
        object.__setattr__(self, "repository", Path(self.repository))
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(
                f"model_control {self.model_control!r}: choose one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        if self.watch_interval_s < 0:
            raise ConfigError(f"watch_interval_s must be >= 0 (0 = off), got {self.watch_interval_s}")

    @classmethod
    def of(cls, config: "ServerConfig | str | Path", **overrides: Any) -> "ServerConfig":
        """``config`` with ``overrides`` applied; a path is the repository of a default config."""
        if isinstance(config, ServerConfig):
            return dataclasses.replace(config, **overrides) if overrides else config
        return cls(repository=Path(config), **overrides)


@dataclass(frozen=True)
class AdminKey:
    key: str | None  # the key the server is started with (None = restricted APIs open)
    path: Path | None  # the file it was generated into / read from (None = given directly)
    generated: bool  # True when this start created the file


def resolve_admin_key(config: ServerConfig, host: str) -> AdminKey:
    """Apply the admin-key policy (module docstring) for a server bound to ``host``."""
    if config.restricted_api_key:
        return AdminKey(config.restricted_api_key, None, False)
    if config.allow_unrestricted:
        return AdminKey(None, None, False)
    if not is_loopback(host) and not config.admin_key_file:  # an explicit key file is a key given
        raise ConfigError(
            f"refusing to bind {host} without an admin key: model control would be open to anyone who reaches "
            f"the port. Pass --admin-key-file FILE (or --admin-key / env FSREC_ADMIN_KEY), or {ALLOW_UNRESTRICTED_FLAG} "
            "on a private network"
        )
    path = Path(config.admin_key_file).expanduser() if config.admin_key_file else admin_key_path()
    generated = _create_key_file(path)
    return AdminKey(read_admin_key_file(path), path, generated)


def _create_key_file(path: Path) -> bool:
    """Write a new random key to ``path`` (mode 0600, created exclusively) unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True
