"""The launcher against a real tritonserver: start-up failures quote the server, stops are clean,
`fsrec serve` obeys SIGTERM/SIGINT, new versions are published to a running server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fsrec_serve.client import RecommenderClient
from fsrec_serve.errors import ServerStartError
from fsrec_serve.serving import find_free_ports, port_is_free

ROOT = Path(__file__).resolve().parents[2]


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- helpers: `fsrec serve` as a subprocess ---------------------------------------------------------
def _post(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _start_cli(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "fsrec_serve.cli", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "press Ctrl-C" in line:
            break
    return proc, lines


def _stubs(cli_pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(cli_pid).children(recursive=True)
            if c.name().startswith("triton_python") and c.status() != psutil.STATUS_ZOMBIE]


def test_port_in_use_reported_from_the_server_log(fsrec_repository, server_factory):
    """The pre-start check is bypassed (extra flag overrides the port): tritonserver itself fails
    to bind, and the error quotes its own message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServerStartError) as ei:
            server_factory(fsrec_repository, extra_args=[f"--grpc-port={port}"])
        assert time.monotonic() - t0 < 60
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "already in use" in msg
    assert "--grpc-port" in msg  # names the fix
    assert any("already in use" in line for line in ei.value.log_lines)


def test_port_in_use_checked_before_start(fsrec_repository, server_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"HTTP port {port} .* already in use.*--http-port"):
            server_factory(fsrec_repository, http_port=port)


def test_model_that_fails_to_load_gives_the_server_message(repository_copy, server_factory):
    repo = repository_copy()
    (repo / "fsrec" / "1" / "model.onnx").write_bytes(b"this is not an onnx graph")
    with pytest.raises(ServerStartError) as ei:
        server_factory(repo)
    msg = str(ei.value)
    assert "failed to load" in msg and "fsrec" in msg
    assert "fix the repository" in msg
    assert Path(ei.value.log_path).exists()


def test_stop_terminates_the_process_group(fsrec_repository, server_factory):
    server = server_factory(fsrec_repository)
    pgid = server.pid
    assert server.is_alive() and not _group_gone(pgid)
    assert urllib.request.urlopen(f"{server.url_http}/v2/health/ready", timeout=5).status == 200
    t0 = time.monotonic()
    code = server.stop()
    assert time.monotonic() - t0 < server.stop_timeout + 5
    assert code is not None and not server.is_alive()
    assert _group_gone(pgid)  # python-backend stubs included
    assert port_is_free("127.0.0.1", server.ports.http) and port_is_free("127.0.0.1", server.ports.grpc)
    assert server.log_path.exists() and "fsrec" in server.log_path.read_text()
    assert server.stop() == code  # idempotent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_fsrec_serve_cli_stops_cleanly_on_signal(fsrec_repository, triton_available, tmp_path, sig):
    http, grpc, metrics = find_free_ports(3)
    log_file = tmp_path / "triton.log"
    proc, lines = _start_cli(["--repository", str(fsrec_repository), "--http-port", str(http), "--grpc-port",
                              str(grpc), "--metrics-port", str(metrics), "--log-file", str(log_file)], dict(os.environ))
    try:
        assert any("tritonserver ready" in ln for ln in lines), "".join(lines)
        assert urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/fsrec/ready", timeout=5).status == 200
        proc.send_signal(sig)
        rc = proc.wait(timeout=40)
        rest = proc.stdout.read()
        assert rc == 0, "".join(lines) + rest
        assert "stopped tritonserver" in rest
        assert port_is_free("127.0.0.1", http) and port_is_free("127.0.0.1", grpc)
        assert log_file.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_refresh_repository_publishes_a_new_version(repository_copy, tiny_export, server_factory, e2e_limits):
    """A version added to the source repository reaches the running server through
    refresh_repository() + load_model (the primitive a rollout builds on)."""
    from exporters import build_model_repository

    repo = repository_copy()
    server = server_factory(repo, restricted_api_key=e2e_limits.admin_key)
    with RecommenderClient.for_server(server, "grpc", admin=True) as c:
        assert c.recommend(["1", "2"], k=3).model_version == "1"
        build_model_repository(repo, tiny_export, target="cpu")  # version 2
        server.refresh_repository()
        c.load_model()
        assert c.is_ready(version=2)  # model readiness: the server itself is not ready while v1 unloads
        c.refresh()  # side files of the newest version
        assert c.repository_version == "2"
        assert c.recommend(["1", "2"], k=3).model_version == "2"


def test_grpc_tls(fsrec_repository, server_factory, tmp_path):
    """TLS on the gRPC endpoint with a self-signed certificate: a TLS client with the CA gets
    answers, a plaintext client does not."""
    import shutil

    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.errors import ServerUnavailableError

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = server_factory(fsrec_repository, tls_cert_file=cert, tls_key_file=key)
    with RecommenderClient(f"grpcs://{server.url_grpc}", repository=fsrec_repository, root_certificates=cert) as c:
        assert c.ssl and c.is_ready()
        assert len(c.recommend(["1", "2"], k=4).items) == 4
    with RecommenderClient(server.url_grpc, "grpc", repository=fsrec_repository, retries=0, timeout_s=5) as plain:
        with pytest.raises(ServerUnavailableError):
            plain.recommend(["1"], k=2)


# -- admin key by default, and recovery from a dead python-backend stub ----------------------------
def test_fsrec_serve_without_a_key_generates_one_and_recovers_a_killed_stub(fsrec_repository, triton_available,
                                                                           user_histories, tmp_path, monkeypatch,
                                                                           capsys):
    """No key given: a random key is written to a 0600 file under the state dir and printed;
    unload without the header gets 403, with the file's key 200, and `fsrec models` on the same
    machine finds the key file by itself. A python-backend stub killed
    under `fsrec serve` is replaced (the model is reloaded) and the model answers again."""
    http, grpc = find_free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in ("FSREC_ADMIN_KEY", "FSREC_ADMIN_KEY_FILE")}
    env["FSREC_STATE_DIR"] = str(tmp_path / "state")
    key_file = tmp_path / "state" / "admin.key"
    proc, lines = _start_cli(["--repository", str(fsrec_repository), "--http-port", str(http), "--grpc-port",
                              str(grpc), "--metrics-port", "-1", "--watch-interval", "0.5"], env)
    try:
        out = "".join(lines)
        assert "tritonserver ready" in out and f"admin key (model control, repository): {key_file}" in out, out
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 40

        # a killed stub: requests that reach it fail until `fsrec serve` reloads the model
        with RecommenderClient(f"127.0.0.1:{grpc}", repository=fsrec_repository, retries=0, timeout_s=10) as c:
            want = c.recommend(user_histories[0], k=5).items
            stubs = _stubs(proc.pid)
            assert stubs, "no python-backend stub found"
            os.kill(stubs[0], signal.SIGKILL)
            t0, ok, last_error = time.monotonic(), 0, None
            while ok < 20 and time.monotonic() - t0 < 30:  # 20 answers in a row: every instance is back
                try:
                    assert c.recommend(user_histories[0], k=5).items == want
                    ok += 1
                except Exception as e:  # noqa: BLE001 - the failures while the stub is dead
                    ok, last_error = 0, e
                    time.sleep(0.1)
            recovery_s = time.monotonic() - t0
            assert ok == 20, f"no recovery within 30 s; last error: {last_error}"
            assert recovery_s < 30 and stubs[0] not in _stubs(proc.pid)
            # no stub leaks: the old generation's survivor is stopped, the instance count is as before
            deadline = time.monotonic() + 40
            while len(_stubs(proc.pid)) != len(stubs) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(_stubs(proc.pid)) == len(stubs) and not set(stubs) & set(_stubs(proc.pid))
            assert all(c.recommend(user_histories[0], k=5).items == want for _ in range(20))

        unload = f"http://127.0.0.1:{http}/v2/repository/models/fsrec/unload"
        assert _post(unload) == 403  # no header
        assert _post(unload, {"fsrec-admin-key": "wrong"}) == 403
        from fsrec_serve.cli import main

        monkeypatch.setenv("FSREC_STATE_DIR", env["FSREC_STATE_DIR"])  # the same machine and user
        monkeypatch.delenv("FSREC_ADMIN_KEY", raising=False)
        monkeypatch.delenv("FSREC_ADMIN_KEY_FILE", raising=False)
        server_args = ["--url", f"127.0.0.1:{http}", "--protocol", "http"]
        assert main(["models", "list", *server_args, "--json"]) == 0 and '"READY"' in capsys.readouterr().out
        assert main(["models", "unload", *server_args]) == 0  # no --admin-key: the key file is found
        time.sleep(2)  # four watcher polls: a model unloaded on purpose stays unloaded
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/fsrec/ready", timeout=5)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert key_file.read_text().strip() == key  # kept for the clients and the next start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_fsrec_serve_refuses_a_public_bind_without_a_key(fsrec_repository, triton_available, tmp_path, capsys,
                                                         monkeypatch):
    from fsrec_serve.cli import main

    monkeypatch.setenv("FSREC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FSREC_ADMIN_KEY", raising=False)
    rc = main(["serve", "--repository", str(fsrec_repository), "--host", "0.0.0.0", "--http-port", "0",
               "--grpc-port", "0", "--metrics-port", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to bind 0.0.0.0 without an admin key" in err and "--allow-unrestricted" in err
    assert not (tmp_path / "state" / "admin.key").exists()
