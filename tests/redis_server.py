"""A real redis-server for tests: a free loopback port, a temp folder, no fakes.

``with running_redis(tmp_path) as srv:`` starts ``redis-server`` (append-only file with
``appendfsync always`` unless ``appendonly=False``; no RDB snapshots), waits until it answers
PING, and stops it on exit. ``srv.kill()`` sends SIGKILL (a crash); ``srv.restart()`` starts it
again on the same port and folder (the append-only file is replayed).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 10.0  # how long to wait for the first PONG


def redis_server_binary() -> str | None:
    """The redis-server on PATH (or the Debian package's), None if there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")  # -LOADING while the append-only file is replayed
    except OSError:
        return False


class RedisServer:
    """One redis-server process (module docstring)."""

    def __init__(self, folder: Path, appendonly: bool = True, port: int | None = None):
        self.binary = redis_server_binary()  # the redis-server used
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.folder = Path(folder)  # --dir: the append-only file and the log
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly  # persist every write (fsync always) to survive kill -9
        self.port = port or free_port()  # the loopback port it listens on
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder),
                "--logfile", str(self.folder / "redis.log"), "--daemonize", "no", "--protected-mode", "yes"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:] if (
                    self.folder / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what was already fsynced."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


@contextlib.contextmanager
def running_redis(tmp_path: Path, appendonly: bool = True) -> Iterator[RedisServer]:
    srv = RedisServer(Path(tmp_path) / "redis", appendonly=appendonly)
    for attempt in range(3):  # the free port may be taken between probing and binding
        try:
            srv.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            srv.port = free_port()
    try:
        yield srv
    finally:
        srv.stop()
