"""tritonserver command-line flags, shared by the local launcher and the container command."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..contract import DEFAULT_RESTRICTED_APIS, RESTRICTED_KEY_HEADER
from ..errors import ConfigError
from .ports import ServerPorts

# Triton's restricted endpoint groups (tritonserver --help, 2.51)
RESTRICTABLE_APIS = (
    "health", "metadata", "inference", "shared-memory", "model-config",
    "model-repository", "statistics", "trace", "logging",
)  # fmt: skip


# Latency summaries beside Triton's cumulative counters (tritonserver --metrics-config, 2.51):
# nv_inference_{request,queue,compute_input,compute_infer,compute_output}_summary_us with one
# series per quantile, computed over a sliding time window (an experimental Triton feature); the
# p95/p99 alerts and the dashboard (docker/prometheus-rules.yml, docker/grafana/) read them.
# The value is "quantile:allowed rank error" pairs.
SUMMARY_QUANTILES = "0.5:0.05,0.9:0.01,0.95:0.005,0.99:0.001"


def metrics_config_args() -> list[str]:
    """tritonserver flags that add the latency summaries (quantiles) to /metrics."""
    return ["--metrics-config=summary_latencies=true", f"--metrics-config=summary_quantiles={SUMMARY_QUANTILES}"]


def list_models(repository: Path) -> list[str]:
    """Names of the models in a repository (folders holding a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt"))


def restricted_args(key: str, apis: Sequence[str] = DEFAULT_RESTRICTED_APIS) -> list[str]:
    """tritonserver flags that put ``apis`` behind the header ``fsrec-admin-key: <key>`` on both
    HTTP and gRPC."""
    if not key or any(c in key for c in ",:= \t\n"):
        raise ConfigError("restricted_api_key must be a non-empty string without spaces, ',', ':' or '='")
    bad = [a for a in apis if a not in RESTRICTABLE_APIS]
    if bad or not apis:
        raise ConfigError(f"restricted_apis {list(apis)}: choose from {', '.join(RESTRICTABLE_APIS)}")
    spec = f"{','.join(apis)}:{RESTRICTED_KEY_HEADER}={key}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


def triton_args(
    repository: str | Path,
    *,
    host: str,
    ports: ServerPorts,
    model_control: str,
    models: Sequence[str],
    restricted_api_key: str | None,
    restricted_apis: Sequence[str],
    log_verbose: int = 0,
    exit_timeout_s: int = 10,
) -> list[str]:
    """Server flags shared by the local launcher and the container command."""
    args = [
        f"--model-repository={repository}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--model-control-mode={model_control}",
        f"--log-verbose={int(log_verbose)}",
        f"--exit-timeout-secs={int(exit_timeout_s)}",
        "--strict-readiness=true",
        "--exit-on-error=true",
    ]
    if ports.metrics:
        args += [f"--metrics-address={host}", f"--metrics-port={ports.metrics}", "--allow-metrics=true",
                 *metrics_config_args()]
    else:
        args += ["--allow-metrics=false"]
    if model_control == "explicit":
        args += [f"--load-model={m}" for m in models]
    if restricted_api_key:
        args += restricted_args(restricted_api_key, restricted_apis)
    return args


def tls_args(cert: Path | None, key: Path | None, client_ca: Path | None) -> list[str]:
    """gRPC TLS flags from PEM files (client_ca: mutual TLS)."""
    if not (cert or key or client_ca):
        return []
    if not (cert and key):
        raise ConfigError("gRPC TLS needs both tls_cert_file and tls_key_file (PEM)")
    files = {"tls_cert_file": cert, "tls_key_file": key, "tls_client_ca_file": client_ca}
    for name, f in files.items():
        if f and not Path(f).is_file():
            raise ConfigError(f"{name} {f} does not exist")
    args = [f"--grpc-server-cert={Path(cert).resolve()}", f"--grpc-server-key={Path(key).resolve()}"]
    if client_ca:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(client_ca).resolve()}"]
    else:
        args += ["--grpc-use-ssl=true"]
    return args
