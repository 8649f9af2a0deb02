"""Typed settings read from ``FSREC_*`` environment variables (the CLI overrides them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_NAME = "fsrec"  # name of the model in the Triton repository
DEFAULT_HTTP_PORT = 8000  # Triton's default HTTP port
DEFAULT_GRPC_PORT = 8001  # Triton's default gRPC port
DEFAULT_METRICS_PORT = 8002  # Triton's default Prometheus port
DEFAULT_HOST = "127.0.0.1"  # bind address: loopback unless asked otherwise


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
