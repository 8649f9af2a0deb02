"""Keep the served models answering: reload a model whose python-backend stub died.

Triton 2.51 does not restart a killed python-backend stub on its own (measured: see
docs/serving.md); the model keeps reporting READY while every request fails. The watcher runs in
a thread of the launcher: every ``interval_s`` it lists the server's stub processes (children
of the tritonserver process, one per model instance) and, when one has disappeared, reloads
the loaded models through the model-control API (with the server's admin key), which starts
new stubs. A model unloaded on purpose (``fsrec models unload``) is not touched: only models
that are loaded and whose stub vanished are reloaded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import RESTRICTED_KEY_HEADER

log = logging.getLogger(__name__)

STUB_MARKER = "triton_python_backend_stub"  # the stub's executable name


def stub_models(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the live python-backend stubs under a tritonserver process. The stub's
    first argument is ``<repository>/<model>/<version>/model.py``."""
    import psutil

    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for c in children:
        try:
            argv = c.cmdline()
            if c.status() != psutil.STATUS_ZOMBIE and argv and STUB_MARKER in argv[0]:
                out[c.pid] = Path(argv[1]).parent.parent.name if len(argv) > 1 else ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def stub_pids(server_pid: int) -> set[int]:
    """PIDs of the live python-backend stubs under a tritonserver process."""
    return set(stub_models(server_pid))


@dataclass
class Recovery:
    at: float  # time.time() when the dead stub was seen
    lost_stubs: int  # how many stub processes had disappeared
    models: list[str]  # models reloaded
    seconds: float  # reload call duration
    error: str = ""  # the reload's error, if it failed


@dataclass
class ModelWatcher:
    server: Any  # the TritonServer to watch (pid, models, url_http, restricted_api_key, is_alive())
    interval_s: float = 2.0  # check period
    recoveries: list[Recovery] = field(default_factory=list)  # every reload done, oldest first
    leftover_grace_s: float = 10.0  # after a reload, old-generation stubs still alive this long are stopped
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _models: dict[int, str] = field(default_factory=dict, repr=False)  # {stub pid: model} at the last poll
    _known: set[int] = field(default_factory=set, repr=False)  # watched stub pids (leftovers excluded)
    _leftovers: dict[int, float] = field(default_factory=dict, repr=False)  # pid -> when to stop it
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "ModelWatcher":
        self._models = stub_models(self.server.pid or 0)
        self._known = set(self._models)
        self._thread = threading.Thread(target=self._run, name="fsrec-model-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.server.is_alive():
                return
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
                log.exception("model watch failed")

    def check(self) -> Recovery | None:
        """One poll: reload the loaded models if a stub known before has disappeared.

        Measured on 2.51: after such a reload the old generation's surviving stub is not stopped
        by Triton (the old model never finishes unloading); it is stopped here once
        ``leftover_grace_s`` has passed, and never counts as a dead stub."""
        current = stub_models(self.server.pid or 0)
        self._stop_leftovers(set(current))
        now = set(current) - set(self._leftovers)
        lost = self._known - now
        if not lost:
            self._known, self._models = now, current
            return None
        dead_models = {self._models.get(p, "") for p in lost}
        models = [m for m in self.server.models if self._loaded(m) and (m in dead_models or "" in dead_models)]
        log.warning("python-backend stub(s) %s died; reloading %s", sorted(lost), ", ".join(models) or "nothing")
        t0 = time.perf_counter()
        errors = [e for e in (self._reload(m) for m in models) if e]
        rec = Recovery(time.time(), len(lost), models, time.perf_counter() - t0, "; ".join(errors))
        self.recoveries.append(rec)
        after = stub_models(self.server.pid or 0)
        deadline = time.monotonic() + self.leftover_grace_s
        # the replaced generation: stubs watched before the death that are still alive (never a stub
        # that appeared since, e.g. one a rollout just started)
        for pid in (self._known & set(after)):
            if current.get(pid) in models or not current.get(pid):  # "" = model not known: all reloaded
                self._leftovers[pid] = deadline
        self._known = set(after) - set(self._leftovers)
        self._models = after
        return rec

    def _stop_leftovers(self, alive: set[int]) -> None:
        for pid, deadline in list(self._leftovers.items()):
            if pid not in alive:
                del self._leftovers[pid]
            elif time.monotonic() >= deadline:  # the stub does not act on SIGTERM while its parent lives
                log.info("stopping leftover python-backend stub %d of a reloaded model", pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    del self._leftovers[pid]

    def _request(self, path: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.server.url_http}{path}", data=data, method="POST" if data else "GET")
        if self.server.restricted_api_key:
            req.add_header(RESTRICTED_KEY_HEADER, self.server.restricted_api_key)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e).encode()

    def _loaded(self, model: str) -> bool:
        """True if a version of ``model`` is READY: a model unloaded (or unloading) on purpose
        (``fsrec models unload``) is left alone."""
        code, body = self._request("/v2/repository/index", {"ready": False}, timeout=10)
        if code != 200:
            return True
        return any(r.get("name") == model and r.get("state") == "READY" for r in json.loads(body))

    def _reload(self, model: str) -> str:
        code, body = self._request(f"/v2/repository/models/{model}/load", {})
        return "" if code == 200 else f"{model}: HTTP {code} {body[:300].decode('utf-8', 'replace')}"
