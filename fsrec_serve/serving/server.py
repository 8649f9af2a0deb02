"""Start, watch and stop a real ``tritonserver`` on a model repository.

``serve(repository, ...)`` returns a :class:`TritonServer` handle (a context manager) once the
server answers ``/v2/health/ready`` and every requested model is ready. The process runs in its
own process group (the python-backend stubs are its children); ``stop()`` sends SIGTERM to the
group, waits, then SIGKILLs whatever is left. Everything the server prints goes to one log file;
a start that fails (port in use, a model that does not load) raises
:class:`~fsrec_serve.errors.ServerStartError` quoting the server's own error lines.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..contract import DEFAULT_RESTRICTED_APIS, RESTRICTED_KEY_HEADER
from ..errors import ConfigError, ServerStartError, ServingError
from ..settings import get_settings
from .constants import CONTAINER_REPOSITORY, TRITON_CONTAINER_IMAGE
from .triton_install import find_triton, library_path, prepare_backends

log = logging.getLogger(__name__)

MODEL_CONTROL_MODES = ("explicit", "poll", "none")
# Triton's restricted endpoint groups (tritonserver --help, 2.51)
RESTRICTABLE_APIS = (
    "health", "metadata", "inference", "shared-memory", "model-config",
    "model-repository", "statistics", "trace", "logging",
)  # fmt: skip
_LIVE_SERVERS: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


# -- ports --------------------------------------------------------------------------------
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


def find_free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
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


@dataclass(frozen=True)
class ServerPorts:
    http: int  # HTTP/REST (KServe v2) port
    grpc: int  # gRPC port
    metrics: int  # Prometheus metrics port (0 = metrics off)


def _connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- log parsing --------------------------------------------------------------------------
_ERROR_LINE = re.compile(
    r"^E\d{4} |error:|failed to|UNAVAILABLE|already in use|Address in use|Traceback|Exception|Error:",
    re.IGNORECASE,
)


# errors every CPU-only start logs (no GPU driver): not the reason a start failed
_HARMLESS = re.compile(r"CudaDriverHelper|NVML|DCGM|cuda|GPU metrics|pinned memory", re.IGNORECASE)
_SOCKET_IN_USE = re.compile(r"Socket '([^']+)' already in use")


def error_lines(log_text: str, limit: int = 25) -> list[str]:
    """The server's own error lines from its log (glog ``E`` lines, failed model loads, ...),
    without the GPU-driver noise every CPU-only start prints."""
    out = []
    for line in log_text.splitlines():
        s = line.strip()
        if s and _ERROR_LINE.search(s) and not _HARMLESS.search(s):
            out.append(s)
    return out[-limit:]


def _port_in_use(log_text: str) -> bool:
    t = log_text.lower()
    return "already in use" in t or "address in use" in t or "address already in use" in t


# -- the handle ---------------------------------------------------------------------------
class TritonServer:
    """A running (or startable) tritonserver process. Use :func:`serve` to create one."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        *,
        host: str,
        ports: ServerPorts,
        log_path: Path,
        repository: Path,
        runtime_repository: Path,
        models: Sequence[str],
        restricted_api_key: str | None = None,
        restricted_apis: Sequence[str] = (),
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        run_dir: Path | None = None,
        kind: str = "local",
    ):
        self.command = list(command)  # argv of the server process (holds the admin key: do not log it)
        self.env = env  # environment of the server process
        self.host = host  # bind address
        self.ports = ports  # HTTP / gRPC / metrics ports
        self.log_path = Path(log_path)  # everything the server prints (stdout + stderr)
        self.repository = Path(repository)  # the repository the user passed (source of truth)
        self.runtime_repository = Path(runtime_repository)  # what tritonserver reads (with EXECUTION_ENV_PATH)
        self.models = list(models)  # models loaded at start (explicit mode) and waited for
        self.restricted_api_key = restricted_api_key  # admin key for restricted endpoints, or None
        self.restricted_apis = tuple(restricted_apis)  # endpoint groups behind the key
        self.startup_timeout = startup_timeout  # seconds to wait for readiness
        self.stop_timeout = stop_timeout  # seconds between SIGTERM and SIGKILL
        self.kind = kind  # "local" (wheel/native binary) or "docker"
        self.run_dir = run_dir  # temp folder of this server (runtime repository copies, default log)
        self.execution_env_path: str | None = None  # set when the runtime copy is materialized
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._log_offset = 0  # where this start's part of the log begins
        self._generation = 0  # runtime copies written by refresh_repository()
        self._lock = threading.Lock()

    # -- addresses --------------------------------------------------------------------
    @property
    def url_http(self) -> str:
        """``http://host:port`` of the HTTP endpoint (what RecommenderClient(protocol="http") takes)."""
        return f"http://{_fmt_host(_connect_host(self.host))}:{self.ports.http}"

    @property
    def url_grpc(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{_fmt_host(_connect_host(self.host))}:{self.ports.grpc}"

    @property
    def url_metrics(self) -> str:
        """Prometheus endpoint (``http://host:port/metrics``)."""
        return f"http://{_fmt_host(_connect_host(self.host))}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"TritonServer({state}, http={self.url_http}, grpc={self.url_grpc}, log={self.log_path})"

    def redacted_command(self) -> str:
        """The command line with the admin key hidden (safe to print or log)."""
        cmd = shlex.join(self.command)
        if self.restricted_api_key:
            cmd = cmd.replace(self.restricted_api_key, "***")
        return cmd

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "TritonServer":
        """Start the process (own process group, output to ``log_path``); does not wait."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_path, "ab", buffering=0)
            self._log_fh.write(f"# fsrec: {self.redacted_command()}\n".encode())
            self._log_offset = self.log_path.stat().st_size
            log.info("starting tritonserver: %s (log: %s)", self.redacted_command(), self.log_path)
            try:
                self._proc = subprocess.Popen(
                    self.command,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: signals from the terminal don't reach it
                )
            except OSError as e:
                self._log_fh.close()
                raise ServerStartError(f"could not execute {self.command[0]}: {e}") from e
            _LIVE_SERVERS.add(self)
        return self

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self._proc is not None and self._proc.poll() is None

    def _get(self, path: str, timeout: float = 2.0) -> int:
        req = urllib.request.Request(f"{self.url_http}{path}")
        if self.restricted_api_key:
            req.add_header(RESTRICTED_KEY_HEADER, self.restricted_api_key)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def is_ready(self) -> bool:
        """True if the server is ready and every model in ``models`` is ready."""
        if not self.is_alive() or self._get("/v2/health/ready") != 200:
            return False
        return all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models)

    def log_text(self, since_start: bool = True) -> str:
        """The server's log (only this start's part when ``since_start``)."""
        try:
            with open(self.log_path, "rb") as f:
                if since_start:
                    f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float | None = None) -> "TritonServer":
        """Block until ready. Raises ServerStartError (with the server's own error lines) if the
        process exits or the timeout passes; the process is stopped in both cases."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            if not self.is_alive():
                self._failed(f"tritonserver exited with code {self.returncode} during start-up")
            if self.is_ready():
                log.info("tritonserver ready: http=%s grpc=%s", self.url_http, self.url_grpc)
                return self
            text = self.log_text()
            if _port_in_use(text):  # the server may keep running without that endpoint
                self._failed("a port is already in use")
            if time.monotonic() > deadline:
                self._failed(f"tritonserver was not ready after {timeout:.0f} s (raise startup_timeout if the model is large)")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _failed(self, what: str) -> None:
        time.sleep(0.2)  # let the last log lines land
        text = self.log_text()
        lines = error_lines(text)
        self.stop()
        hints = []
        if _port_in_use(text):
            sockets = sorted(set(_SOCKET_IN_USE.findall(text)))
            hints.append(
                f"{' and '.join(sockets) or 'a port'} already in use (asked: http {self.ports.http}, grpc {self.ports.grpc}, metrics "
                f"{self.ports.metrics}): stop the other server or pick free ports (--http-port/--grpc-port/--metrics-port)"
            )
        if any("failed to load" in ln or "UNAVAILABLE" in ln for ln in lines):
            hints.append(
                f"a model failed to load: fix the repository {self.repository} (config.pbtxt, model files) "
                "or rebuild it with `fsrec export`"
            )
        if not lines:
            lines = [ln for ln in text.splitlines() if ln.strip()][-15:]
        msg = f"{what}.\n" + ("\n".join(hints) + "\n" if hints else "") + "server log (" + str(self.log_path) + "):\n  " + "\n  ".join(lines)
        err = ServerStartError(msg)
        err.log_lines = lines  # type: ignore[attr-defined]
        err.log_path = self.log_path  # type: ignore[attr-defined]
        raise err

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the server: SIGTERM to its process group, wait up to ``timeout`` (default
        ``stop_timeout``), then SIGKILL. Idempotent; returns the exit code."""
        timeout = self.stop_timeout if timeout is None else timeout
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            pgid = proc.pid  # start_new_session: the leader's pid is the group id
            if proc.poll() is None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not stop within %.0f s; killing it", timeout)
                    _signal_group(pgid, signal.SIGKILL)
                    proc.wait(timeout=10)
            _signal_group(pgid, signal.SIGKILL)  # stubs left behind by a crashed server
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            self._remove_run_dir()
            _LIVE_SERVERS.discard(self)
            return proc.returncode

    def _remove_run_dir(self) -> None:
        """Delete the runtime copies; keep the log (it may be inside run_dir)."""
        if self.run_dir is None or not self.run_dir.is_dir():
            return
        for p in self.run_dir.iterdir():
            if p == self.log_path:
                continue
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
        try:
            self.run_dir.rmdir()  # only if the log lives elsewhere
        except OSError:
            pass

    def serve_forever(self, poll_s: float = 0.5, announce=None) -> int:
        """Block until SIGINT/SIGTERM (then stop cleanly) or until the server dies on its own
        (then raise ServingError with its log). ``announce()`` is called once the signal
        handlers are in place (print "ready" there). Call from the main thread."""
        stop = threading.Event()
        received: list[int] = []

        def handler(signum, frame):
            received.append(signum)
            stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if announce is not None:
                announce()
            while not stop.wait(poll_s):
                if not self.is_alive():
                    lines = error_lines(self.log_text())
                    raise ServingError(
                        f"tritonserver exited unexpectedly with code {self.returncode}; log {self.log_path}:\n  "
                        + "\n  ".join(lines)
                    )
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.stop()
        log.info("stopped tritonserver after signal %s", received[0] if received else "?")
        return 0

    def refresh_repository(self) -> Path:
        """Publish the source repository's current content (e.g. a version just added with
        exporters.build_model_repository) to the running server: a new runtime copy is written
        and the runtime path flipped to it atomically. Then load it through model control
        (``client.load_model()``). Returns the new runtime folder."""
        env_path = self.execution_env_path
        if env_path is None or not self.runtime_repository.is_symlink():
            return self.runtime_repository  # the server reads the source repository directly
        with self._lock:
            self._generation += 1
            gen = _materialize(self.repository, env_path, self.runtime_repository.parent / f"repository-{self._generation}", None)
            _flip_symlink(self.runtime_repository, gen)
        return gen

    # -- conveniences ------------------------------------------------------------------
    def client(self, protocol: str = "grpc", *, admin: bool = False, **kwargs):
        """A RecommenderClient for this server (id map and meta read from the repository).
        ``admin=True`` sends the restricted-API key with model-control calls."""
        from ..client import RecommenderClient

        url = self.url_grpc if protocol == "grpc" else self.url_http
        kwargs.setdefault("repository", self.repository)
        if admin and self.restricted_api_key:
            kwargs.setdefault("admin_key", self.restricted_api_key)
        return RecommenderClient(url, protocol=protocol, **kwargs)

    def async_client(self, protocol: str = "grpc", *, admin: bool = False, **kwargs):
        """An AsyncRecommenderClient for this server (see :meth:`client`)."""
        from ..client import AsyncRecommenderClient

        url = self.url_grpc if protocol == "grpc" else self.url_http
        kwargs.setdefault("repository", self.repository)
        if admin and self.restricted_api_key:
            kwargs.setdefault("admin_key", self.restricted_api_key)
        return AsyncRecommenderClient(url, protocol=protocol, **kwargs)

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # pragma: no cover - last resort; stop() is the API
        try:
            if self._proc is not None and self._proc.poll() is None:
                self.stop(timeout=5)
        except Exception:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all() -> None:  # servers the program forgot to stop
    for s in list(_LIVE_SERVERS):
        try:
            s.stop(timeout=5)
        except Exception:  # pragma: no cover
            pass


# -- building the command -----------------------------------------------------------------
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
        args += [f"--metrics-address={host}", f"--metrics-port={ports.metrics}", "--allow-metrics=true"]
    else:
        args += ["--allow-metrics=false"]
    if model_control == "explicit":
        args += [f"--load-model={m}" for m in models]
    if restricted_api_key:
        args += restricted_args(restricted_api_key, restricted_apis)
    return args


def _tls_args(cert, key, client_ca) -> list[str]:
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


def _resolve_ports(host: str, http_port, grpc_port, metrics_port) -> ServerPorts:
    s = get_settings()
    want = [
        s.http_port if http_port is None else int(http_port),
        s.grpc_port if grpc_port is None else int(grpc_port),
        s.metrics_port if metrics_port is None else int(metrics_port),
    ]
    # 0 = "pick a free port" (tests, parallel servers); metrics may be switched off with -1
    free = iter(find_free_ports(sum(p == 0 for p in want), _connect_host(host)))
    resolved = [next(free) if p == 0 else p for p in want]
    return ServerPorts(resolved[0], resolved[1], 0 if resolved[2] < 0 else resolved[2])


def _check_ports(host: str, ports: ServerPorts) -> None:
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


def _materialize(repository: Path, execution_env_path: str, dest: Path, models: Sequence[str] | None) -> Path:
    """A runnable copy of ``repository`` at ``dest``: python-backend models get
    ``EXECUTION_ENV_PATH`` (exporters.runtime_repository writes it; files are symlinked)."""
    from exporters import runtime_repository  # the exporters area owns the repository format

    return Path(runtime_repository(repository, dest, execution_env_path=execution_env_path, models=models))


def _flip_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (tritonserver follows it on the next load)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def docker_command(
    repository: str | Path,
    *,
    host: str | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    model_control: str = "explicit",
    load_models: Sequence[str] | None = None,
    restricted_api_key: str | None = None,
    restricted_apis: Sequence[str] = DEFAULT_RESTRICTED_APIS,
    image: str = TRITON_CONTAINER_IMAGE,
    gpus: str | None = "all",
    shm_size: str = "1g",
) -> list[str]:
    """The documented official-container command for a GPU host (``docker run ... tritonserver``).

    The repository is mounted read-only at /models; use the ``gpu`` repository target (ONNX
    Runtime backend) there: the ``cpu`` target's python model points at a host virtualenv.
    Ports are published on ``host`` (default 127.0.0.1); inside the container Triton listens on
    0.0.0.0 with its default ports.
    """
    s = get_settings()
    host = host or s.host
    hp = s.http_port if http_port is None else http_port
    gp = s.grpc_port if grpc_port is None else grpc_port
    mp = s.metrics_port if metrics_port is None else metrics_port
    repo = Path(repository).resolve()
    models = list(load_models) if load_models is not None else (list_models(repo) or [s.model_name])
    cmd = ["docker", "run", "--rm", "--init"]
    if gpus:
        cmd += ["--gpus", gpus]
    cmd += [f"--shm-size={shm_size}", "-p", f"{host}:{hp}:8000", "-p", f"{host}:{gp}:8001"]
    if mp:
        cmd += ["-p", f"{host}:{mp}:8002"]
    cmd += ["-v", f"{repo}:{CONTAINER_REPOSITORY}:ro", image, "tritonserver"]
    cmd += triton_args(
        CONTAINER_REPOSITORY,
        host="0.0.0.0",
        ports=ServerPorts(8000, 8001, 8002 if mp else 0),
        model_control=model_control,
        models=models,
        restricted_api_key=restricted_api_key,
        restricted_apis=restricted_apis,
    )
    return cmd


def serve(
    repository: str | Path,
    *,
    host: str | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    log_file: str | Path | None = None,
    model_control: str = "explicit",
    load_models: Sequence[str] | None = None,
    restricted_api_key: str | None = None,
    restricted_apis: Sequence[str] = DEFAULT_RESTRICTED_APIS,
    execution_env_path: str | Path | None = None,
    startup_timeout: float = 120.0,
    stop_timeout: float = 20.0,
    extra_args: Sequence[str] = (),
    docker: bool = False,
    gpus: str | None = "all",
    tritonserver: str | Path | None = None,
    log_verbose: int = 0,
    exit_timeout_s: int = 5,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
    tls_client_ca_file: str | Path | None = None,
    materialize: bool = True,
    wait: bool = True,
) -> TritonServer:
    """Start tritonserver on ``repository`` and (by default) wait until it is ready.

    - ports: ``None`` = Settings (8000/8001/8002, env FSREC_*_PORT), ``0`` = any free port,
      ``metrics_port=-1`` = metrics off; ``host`` default 127.0.0.1.
    - ``model_control="explicit"`` loads ``load_models`` (default: every model in the repository)
      and lets clients load/unload versions later.
    - ``restricted_api_key``: model-control/repository endpoints (``restricted_apis``) then need
      the header ``fsrec-admin-key: <key>`` on HTTP and gRPC; inference stays open.
    - ``execution_env_path``: the Python environment the python-backend model runs in (default:
      this interpreter's ``sys.prefix``, which must have numpy<2 and onnxruntime).
    - ``exit_timeout_s``: on stop, how long tritonserver waits for in-flight requests (and idle
      client connections) before exiting; ``stop_timeout`` later it is SIGKILLed.
    - ``tls_cert_file`` + ``tls_key_file``: TLS on the gRPC endpoint (PEM files);
      ``tls_client_ca_file`` makes it mutual TLS. Triton's HTTP endpoint has no TLS: put it
      behind a gateway (the client's ``https://`` URLs and ``headers`` are for that).
    - ``materialize=False`` serves ``repository`` as is (a ``gpu`` target or an already
      materialized copy); by default tritonserver reads a runtime copy in a temp folder.
    - ``docker=True`` runs the official container instead (GPU hosts; see :func:`docker_command`).

    Raises ServerStartError (port in use, model failed to load, timeout) with the server's own
    log lines, TritonNotFoundError if tritonserver is not installed.
    """
    if model_control not in MODEL_CONTROL_MODES:
        raise ConfigError(f"model_control {model_control!r}: choose one of {', '.join(MODEL_CONTROL_MODES)}")
    repo = Path(repository).expanduser().resolve()
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist; build it with `fsrec export` (exporters.build_model_repository)")
    available = list_models(repo)
    models = list(load_models) if load_models is not None else available
    if not available:
        raise ConfigError(f"model repository {repo} holds no model (no <model>/config.pbtxt); build it with `fsrec export`")
    missing = [m for m in models if m not in available]
    if missing:
        raise ConfigError(f"model(s) {missing} are not in {repo} (it has: {', '.join(available)})")
    if model_control != "explicit":
        models = available if model_control == "none" else models
    tls = _tls_args(tls_cert_file, tls_key_file, tls_client_ca_file)
    if tls and docker:
        raise ConfigError("TLS files are host paths: for the container, mount them and pass the --grpc-*-cert flags in extra_args")
    extra_args = tls + list(extra_args)
    host = host or get_settings().host
    ports = _resolve_ports(host, http_port, grpc_port, metrics_port)
    _check_ports(host, ports)

    run_dir = Path(tempfile.mkdtemp(prefix="fsrec-triton-"))
    log_path = Path(log_file).expanduser().resolve() if log_file else run_dir / "tritonserver.log"
    common = dict(
        host=host,
        ports=ports,
        log_path=log_path,
        repository=repo,
        models=models,
        restricted_api_key=restricted_api_key,
        restricted_apis=restricted_apis if restricted_api_key else (),
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
    )
    if docker:
        cmd = docker_command(
            repo, host=host, http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics,
            model_control=model_control, load_models=models, restricted_api_key=restricted_api_key,
            restricted_apis=restricted_apis, gpus=gpus,
        ) + list(extra_args)  # fmt: skip
        if shutil.which("docker") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise ServingError(
                "docker is not installed on this machine; run this on the GPU host instead:\n  "
                + shlex.join(cmd).replace(restricted_api_key or "\0", "***")
            )
        server = TritonServer(cmd, dict(os.environ), runtime_repository=repo, run_dir=run_dir, kind="docker", **common)
    else:
        install = find_triton(tritonserver)
        backends = prepare_backends(install)
        env_path = str(Path(execution_env_path).resolve()) if execution_env_path else sys.prefix
        runtime = repo
        if materialize:
            # <run_dir>/model_repository is a symlink to a generation folder, so that
            # refresh_repository() can publish new versions atomically while the server runs
            try:
                gen = _materialize(repo, env_path, run_dir / "repository-0", None)
                runtime = run_dir / "model_repository"
                _flip_symlink(runtime, gen)
            except Exception:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
        cmd = [str(install.binary), f"--backend-directory={backends}"]
        cmd += triton_args(
            runtime, host=host, ports=ports, model_control=model_control, models=models,
            restricted_api_key=restricted_api_key, restricted_apis=restricted_apis, log_verbose=log_verbose,
            exit_timeout_s=exit_timeout_s,
        ) + list(extra_args)  # fmt: skip
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = library_path(install)
        server = TritonServer(cmd, env, runtime_repository=runtime, run_dir=run_dir, kind="local", **common)
        server.execution_env_path = env_path if materialize else None
    server.start()
    if wait:
        try:
            server.wait_ready()
        except BaseException:  # Ctrl-C / SIGTERM during start-up: no orphan server
            server.stop()
            raise
    return server
