"""Typed settings read from ``FSREC_*`` environment variables (the CLI overrides them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .contract import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, DEFAULT_MODEL_NAME

ENV_ADMIN_KEY = "FSREC_ADMIN_KEY"  # env: the admin key itself
ENV_ADMIN_KEY_FILE = "FSREC_ADMIN_KEY_FILE"  # env: file holding the admin key
ENV_STATE_DIR = "FSREC_STATE_DIR"  # env: per-user state folder (default $XDG_STATE_HOME/fsrec)
ADMIN_KEY_FILE_NAME = "admin.key"  # the key `fsrec serve` generates, inside the state folder
ENV_USER_KEY_FILE = "FSREC_USER_KEY_FILE"  # env: secret of the keyed hash of user ids
USER_KEY_FILE_NAME = "user.key"  # the user-id hashing secret, inside the state folder


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


@dataclass
class Settings:
    # folder that holds one sub-folder per data set (ml-100k/, amazon-beauty/)
    data_dir: Path = field(
        default_factory=lambda: _env_path("FSREC_DATA_DIR", Path.home() / ".cache" / "fsrec" / "data")
    )
    # where runs (checkpoints, adapters, exports) are written
    work_dir: Path = field(default_factory=lambda: _env_path("FSREC_WORK_DIR", Path("runs")))
    # Triton ports and bind address
    host: str = field(default_factory=lambda: os.environ.get("FSREC_HOST", DEFAULT_HOST))
    http_port: int = field(default_factory=lambda: int(os.environ.get("FSREC_HTTP_PORT", DEFAULT_HTTP_PORT)))
    grpc_port: int = field(default_factory=lambda: int(os.environ.get("FSREC_GRPC_PORT", DEFAULT_GRPC_PORT)))
    metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("FSREC_METRICS_PORT", DEFAULT_METRICS_PORT))
    )
    # model name in the Triton repository
    model_name: str = field(default_factory=lambda: os.environ.get("FSREC_MODEL_NAME", DEFAULT_MODEL_NAME))


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides applied."""
    s = Settings()
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(s, k):
            from .errors import ConfigError

            raise ConfigError(f"unknown setting {k!r}; known: {', '.join(s.__dataclass_fields__)}")
        setattr(s, k, Path(v) if k.endswith("_dir") else v)
    return s


# -- per-user state: the admin key `fsrec serve` generates and clients find -------------------
def state_dir() -> Path:
    """Per-user state folder: $FSREC_STATE_DIR, else $XDG_STATE_HOME/fsrec, else
    ~/.local/state/fsrec."""
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state") / "fsrec"


def admin_key_path() -> Path:
    """Where the generated admin key lives: $FSREC_ADMIN_KEY_FILE, else <state_dir>/admin.key."""
    env = os.environ.get(ENV_ADMIN_KEY_FILE)
    return Path(env).expanduser() if env else state_dir() / ADMIN_KEY_FILE_NAME


def read_admin_key_file(path: str | Path) -> str:
    """The key in ``path`` (surrounding whitespace stripped). Refuses a file other users can read
    and an empty file (ConfigError naming the fix)."""
    from .errors import ConfigError

    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode & 0o777
        key = p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"admin key file {p}: {e.strerror or e}; pass --admin-key-file with a readable file") from None
    if mode & 0o077:
        raise ConfigError(f"admin key file {p} is readable by other users (mode {mode:o}): run `chmod 600 {p}`")
    if not key:
        raise ConfigError(f"admin key file {p} is empty: write the key into it, or delete it to generate a new one")
    return key


def find_admin_key(explicit: str | None = None) -> str | None:
    """The admin key a client on this machine sends: ``explicit``, else $FSREC_ADMIN_KEY, else the
    key file (admin_key_path()) if it exists, else None."""
    if explicit:
        return explicit
    if os.environ.get(ENV_ADMIN_KEY):
        return os.environ[ENV_ADMIN_KEY]
    path = admin_key_path()
    return read_admin_key_file(path) if path.is_file() else None


def user_key_path() -> Path:
    """Secret of the keyed hash (HMAC-SHA256) of user ids: $FSREC_USER_KEY_FILE, else
    <state_dir>/user.key (created 0600 on first use by ``fsrec_serve.store.keys``)."""
    env = os.environ.get(ENV_USER_KEY_FILE)
    return Path(env).expanduser() if env else state_dir() / USER_KEY_FILE_NAME
