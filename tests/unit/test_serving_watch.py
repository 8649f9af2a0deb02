"""The model watcher against a stand-in server: real child processes named like the python
stub, and a local HTTP endpoint in place of Triton's model-control API (the real thing is
exercised end to end in tests/e2e/test_serving_launcher_e2e.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from fsrec_serve.serving.watch import STUB_MARKER, ModelWatcher, stub_models


class FakeTriton:
    """Model control of one model: index state, and a log of load calls (with their key)."""

    def __init__(self, state: str = "READY"):
        self.state, self.loads = state, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v2/repository/index":
                    body = json.dumps([{"name": "fsrec", "version": "1", "state": outer.state}]).encode()
                elif self.path == "/v2/repository/models/fsrec/load":
                    outer.loads.append(self.headers.get("fsrec-admin-key"))
                    body = b""
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def stubs(tmp_path):
    """Start stand-in stubs as children of this process: argv[0] carries the stub's name."""
    model_py = tmp_path / "repo" / "fsrec" / "1" / "model.py"  # the stub's first argument names the model
    model_py.parent.mkdir(parents=True)
    model_py.write_text("import time\ntime.sleep(300)\n")
    procs = []

    def start(n: int):
        new = [subprocess.Popen([str(tmp_path / STUB_MARKER), str(model_py)], executable=sys.executable)
               for _ in range(n)]
        procs.extend(new)
        return new

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _server(fake: FakeTriton):
    return SimpleNamespace(pid=os.getpid(), models=["fsrec"], url_http=fake.url, restricted_api_key="k",
                           is_alive=lambda: True)


def test_dead_stub_triggers_one_reload_with_the_key_and_leftovers_are_stopped(stubs):
    fake = FakeTriton()
    first = stubs(2)
    watcher = ModelWatcher(_server(fake), interval_s=3600, leftover_grace_s=0.2)
    watcher.start()  # remembers the two stubs; the thread waits an hour, checks run by hand below
    try:
        assert {p.pid: "fsrec" for p in first}.items() <= stub_models(os.getpid()).items()
        assert watcher.check() is None and fake.loads == []  # all alive: nothing to do
        first[0].kill()
        first[0].wait()
        replacement = stubs(2)  # new stubs (a reload, a rollout): never taken for leftovers
        rec = watcher.check()
        assert rec is not None and rec.lost_stubs == 1 and rec.models == ["fsrec"] and fake.loads == ["k"]
        assert first[1].poll() is None  # the survivor of the old generation: a leftover, not yet stopped
        time.sleep(0.3)
        assert watcher.check() is None and fake.loads == ["k"]  # stopping a leftover is no new death
        assert first[1].wait(timeout=5) is not None  # stopped after the grace period
        assert watcher.check() is None and fake.loads == ["k"]
        assert all(p.poll() is None for p in replacement)
    finally:
        watcher.stop()


def test_a_model_unloaded_on_purpose_is_not_reloaded(stubs):
    fake = FakeTriton(state="UNAVAILABLE")
    (one,) = stubs(1)
    watcher = ModelWatcher(_server(fake), interval_s=3600).start()
    try:
        one.kill()
        one.wait()
        rec = watcher.check()
        assert rec is not None and rec.models == [] and fake.loads == []
    finally:
        watcher.stop()
