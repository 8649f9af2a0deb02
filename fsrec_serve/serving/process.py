"""The handle of one tritonserver process: start, readiness, logs, signals, stop.

``TritonServer`` is created by :func:`fsrec_serve.serving.serve`. The process runs in its own
process group (the python-backend stubs are its children); ``stop()`` sends SIGTERM to the
group, waits, then SIGKILLs whatever is left. Everything the server prints goes to one log
file; a start that fails (port in use, a model that does not load) raises
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
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Sequence

from ..contract import RESTRICTED_KEY_HEADER
from ..errors import ServerStartError, ServingError
from .ports import ServerPorts, connect_host, fmt_host
from .runtime import flip_symlink, materialize
from .watch import ModelWatcher

log = logging.getLogger(__name__)

_LIVE_SERVERS: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


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


def startup_exit_message(returncode: int | None) -> str:
    """What a tritonserver that ended during start-up died of. A negative code is the signal
    that killed it (subprocess's convention): named, and for SIGSEGV with the known cause."""
    if returncode is None or returncode >= 0:
        return f"tritonserver exited with code {returncode} during start-up"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    msg = f"tritonserver died of {name} (exit code {returncode}) during start-up"
    if -returncode == signal.SIGSEGV:
        msg += ("; a model warm-up the model refuses crashes Triton 2.51 \u2014 check the model_warmup entries of "
                "config.pbtxt (inputs, shapes, dtypes) against the model, or remove them")
    return msg


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
        admin_key_file: Path | None = None,
        watch_interval_s: float = 0.0,
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
        self.admin_key_file = admin_key_file  # file the (generated) admin key was read from, or None
        self.watch_interval_s = watch_interval_s  # serve_forever: model watch period (0 = off)
        self.watcher: ModelWatcher | None = None  # reloads models whose python stub died (watch())
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._log_offset = 0  # where this start's part of the log begins
        self._generation = 0  # runtime copies written by refresh_repository()
        self._lock = threading.Lock()

    # -- addresses --------------------------------------------------------------------
    @property
    def url_http(self) -> str:
        """``http://host:port`` of the HTTP endpoint (what RecommenderClient(protocol="http") takes)."""
        return f"http://{fmt_host(connect_host(self.host))}:{self.ports.http}"

    @property
    def url_grpc(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{fmt_host(connect_host(self.host))}:{self.ports.grpc}"

    @property
    def url_metrics(self) -> str:
        """Prometheus endpoint (``http://host:port/metrics``)."""
        return f"http://{fmt_host(connect_host(self.host))}:{self.ports.metrics}/metrics"

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
                self._failed(startup_exit_message(self.returncode))
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
        msg = f"{what}.\n" + ("\n".join(hints) + "\n" if hints else "") + "last log lines (" + str(self.log_path) + "):\n  " + "\n  ".join(lines)
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
            if self.watcher is not None:
                self.watcher.stop()
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

    def watch(self, interval_s: float = 2.0) -> ModelWatcher:
        """Start (once) the thread that reloads models whose python-backend stub died."""
        if self.watcher is None:
            self.watcher = ModelWatcher(self, interval_s).start()
        return self.watcher

    def serve_forever(self, poll_s: float = 0.5, announce=None) -> int:
        """Block until SIGINT/SIGTERM (then stop cleanly) or until the server dies on its own
        (then raise ServingError with its log). ``announce()`` is called once the signal
        handlers are in place (print "ready" there). Call from the main thread. With
        ``watch_interval_s`` > 0 the model watcher (:meth:`watch`) runs meanwhile."""
        stop = threading.Event()
        received: list[int] = []

        def handler(signum, frame):
            received.append(signum)
            stop.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.watch_interval_s > 0:
                self.watch(self.watch_interval_s)
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
            gen = materialize(self.repository, env_path, self.runtime_repository.parent / f"repository-{self._generation}", None)
            flip_symlink(self.runtime_repository, gen)
        return gen

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
