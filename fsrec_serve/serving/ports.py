"""Ports and addresses of a local tritonserver: free-port checks and the address a local client
uses to reach a server bound to a given host."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ..contract import DEFAULT_HOST
from ..errors import ConfigError, ServerStartError
from ..settings import get_settings


@dataclass(frozen=True)
class ServerPorts:
    http: int  # HTTP/REST (KServe v2) port
    grpc: int  # gRPC port
    metrics: int  # Prometheus metrics port (0 = metrics off)


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (bind test with SO_REUSEADDR, so sockets in
    TIME_WAIT do not count as taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_ports(n: int = 3, host: str = DEFAULT_HOST) -> list[int]:
    """``n`` distinct ports that are free right now (the OS picks them; a small race remains)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    return {"0.0.0.0": DEFAULT_HOST, "::": "::1", "": DEFAULT_HOST}.get(host, host)


def fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def resolve_ports(host: str, http_port: int | None, grpc_port: int | None, metrics_port: int | None) -> ServerPorts:
    """None = settings (8000/8001/8002, env FSREC_*_PORT), 0 = any free port, metrics -1 = off."""
    s = get_settings()
    want = [
        s.http_port if http_port is None else int(http_port),
        s.grpc_port if grpc_port is None else int(grpc_port),
        s.metrics_port if metrics_port is None else int(metrics_port),
    ]
    free = iter(find_free_ports(sum(p == 0 for p in want), connect_host(host)))
    resolved = [next(free) if p == 0 else p for p in want]
    return ServerPorts(resolved[0], resolved[1], 0 if resolved[2] < 0 else resolved[2])


def check_ports(host: str, ports: ServerPorts) -> None:
    """Distinct, in range and free right now; otherwise an error naming the flag to change."""
    named = [("HTTP", ports.http, "--http-port"), ("gRPC", ports.grpc, "--grpc-port")]
    if ports.metrics:
        named.append(("metrics", ports.metrics, "--metrics-port"))
    nums = [p for _, p, _ in named]
    if len(set(nums)) != len(nums):
        raise ConfigError(f"HTTP, gRPC and metrics ports must differ (got {nums})")
    for what, port, flag in named:
        if not 0 < port < 65536:
            raise ConfigError(f"{what} port {port} is out of range 1..65535 ({flag})")
        if not port_is_free(host, port):
            raise ServerStartError(
                f"{what} port {port} on {host} is already in use: another tritonserver (or program) "
                f"listens there. Stop it, or pick a free port with {flag} (0 = any free port)"
            )
