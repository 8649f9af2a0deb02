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
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..contract import RESTRICTED_KEY_HEADER

log = logging.getLogger(__name__)

STUB_MARKER = "triton_python_backend_stub"  # the stub's executable name


def stub_pids(server_pid: int) -> set[int]:
    """PIDs of the python-backend stubs under a tritonserver process (psutil)."""
    import psutil

    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for c in children:
        try:
            if c.status() != psutil.STATUS_ZOMBIE and STUB_MARKER in " ".join(c.cmdline()[:1]):
                out.add(c.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


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
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "ModelWatcher":
        self._known = stub_pids(self.server.pid or 0)
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
        """One poll: reload the loaded models if a stub known before has disappeared."""
        now = stub_pids(self.server.pid or 0)
        lost = self._known - now
        if not lost:
            self._known = now
            return None
        models = [m for m in self.server.models if self._loaded(m)]
        log.warning("python-backend stub(s) %s died; reloading %s", sorted(lost), ", ".join(models) or "nothing")
        t0 = time.perf_counter()
        errors = [e for e in (self._reload(m) for m in models) if e]
        rec = Recovery(time.time(), len(lost), models, time.perf_counter() - t0, "; ".join(errors))
        self.recoveries.append(rec)
        self._known = stub_pids(self.server.pid or 0)
        return rec

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
        """True unless the repository index says the model was unloaded on purpose."""
        code, body = self._request("/v2/repository/index", {"ready": False}, timeout=10)
        if code != 200:
            return True
        rows = [r for r in json.loads(body) if r.get("name") == model]
        return not rows or any(r.get("state") != "UNAVAILABLE" or r.get("reason") != "unloaded" for r in rows)

    def _reload(self, model: str) -> str:
        code, body = self._request(f"/v2/repository/models/{model}/load", {})
        return "" if code == 200 else f"{model}: HTTP {code} {body[:300].decode('utf-8', 'replace')}"
