"""Launcher pieces that need no running server: locating tritonserver, the backends folder,
ports, argument building, the container command and start-up refusals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsrec_serve.errors import ConfigError, ServerStartError, TritonNotFoundError
from fsrec_serve.serving import (
    TRITON_CONTAINER_IMAGE,
    docker_command,
    error_lines,
    find_free_ports,
    find_triton,
    port_is_free,
    prepare_backends,
    restricted_args,
    serve,
)
from fsrec_serve.serving.triton_install import STUB_NAME, python_tag

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy_repo(tmp_path) -> Path:
    model = tmp_path / "repo" / "fsrec"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "fsrec"\nbackend: "python"\nmax_batch_size: 8\n')
    return tmp_path / "repo"


@pytest.fixture
def wheel():
    try:
        return find_triton()
    except TritonNotFoundError as e:
        pytest.skip(str(e))


# -- locating tritonserver -----------------------------------------------------------------------
def test_wheel_binary_and_stub_are_found(wheel):
    assert wheel.binary.is_file() and os.access(wheel.binary, os.X_OK)
    assert (wheel.backends_dir / "python" / "libtriton_python.so").is_file()
    assert (wheel.stubs_dir / python_tag() / STUB_NAME).is_file()
    assert wheel.libs_dir is not None and wheel.libs_dir.is_dir()


def test_missing_wheel_names_the_install_command(tmp_path):
    """Run in an interpreter that cannot see site-packages: nvidia-pytriton is 'not installed'."""
    code = (
        "import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; sys.path.insert(0, %r)\n"
        "from fsrec_serve.serving.triton_install import find_triton\n"
        "from fsrec_serve.errors import TritonNotFoundError\n"
        "try:\n    find_triton()\nexcept TritonNotFoundError as e:\n    print('ERR', e)\n"
    ) % str(ROOT)
    env = {k: v for k, v in os.environ.items() if k != "FSREC_TRITONSERVER"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "pip install 'fsrec-serve[triton]'" in out.stdout


def test_bad_binary_override_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FSREC_TRITONSERVER", str(tmp_path / "nope" / "tritonserver"))
    with pytest.raises(TritonNotFoundError, match="FSREC_TRITONSERVER"):
        find_triton()


def test_backends_folder_is_built_once(wheel, tmp_path):
    path = prepare_backends(wheel, tmp_path)
    stub = path / "python" / STUB_NAME
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert (path / "python" / "libtriton_python.so").is_file()
    assert (path / "python" / "triton_python_backend_utils.py").is_file()
    mtime = stub.stat().st_mtime_ns
    assert prepare_backends(wheel, tmp_path) == path and stub.stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "triton").iterdir() if p.name.startswith(".backends-")]  # no temp left


# -- ports ---------------------------------------------------------------------------------------
def test_ports():
    ports = find_free_ports(3)
    assert len(set(ports)) == 3 and all(port_is_free("127.0.0.1", p) for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_is_free("127.0.0.1", s.getsockname()[1])


def test_port_in_use_is_refused_before_starting(toy_repo, wheel):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServerStartError, match=rf"gRPC port {port} on 127.0.0.1 is already in use.*--grpc-port"):
            serve(toy_repo, http_port=0, grpc_port=port, metrics_port=0)
        assert time.monotonic() - t0 < 5


def test_start_up_refusals(toy_repo, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        serve(tmp_path / "nope")
    with pytest.raises(ConfigError, match="holds no model"):
        serve(tmp_path)
    with pytest.raises(ConfigError, match=r"\['other'\] are not in"):
        serve(toy_repo, load_models=["other"])
    with pytest.raises(ConfigError, match="model_control"):
        serve(toy_repo, model_control="sometimes")
    with pytest.raises(ConfigError, match="must differ"):
        serve(toy_repo, http_port=19555, grpc_port=19555, metrics_port=-1)


# -- arguments -----------------------------------------------------------------------------------
def test_restricted_args():
    args = restricted_args("k3y", ("model-repository", "logging"))
    assert args == [
        "--http-restricted-api=model-repository,logging:fsrec-admin-key=k3y",
        "--grpc-restricted-protocol=model-repository,logging:fsrec-admin-key=k3y",
    ]
    for bad in ("", "a b", "a:b", "a=b", "a,b"):
        with pytest.raises(ConfigError):
            restricted_args(bad)
    with pytest.raises(ConfigError, match="choose from"):
        restricted_args("k", ("model-control",))


def test_latency_summaries_come_with_metrics_only():
    """With metrics on, tritonserver gets the summary flags (p50..p99 per request, queue and compute
    time, which the p95/p99 alerts read); with metrics off, none."""
    from fsrec_serve.serving.flags import metrics_config_args, triton_args
    from fsrec_serve.serving.ports import ServerPorts

    def args(metrics: int) -> list[str]:
        return triton_args("/models", host="127.0.0.1", ports=ServerPorts(8000, 8001, metrics), model_control="explicit",
                           models=["fsrec"], restricted_api_key=None, restricted_apis=())

    config = metrics_config_args()
    assert config[0] == "--metrics-config=summary_latencies=true"
    quantiles = config[1].removeprefix("--metrics-config=summary_quantiles=").split(",")
    assert {q.split(":")[0] for q in quantiles} >= {"0.5", "0.95", "0.99"}  # what the alerts and the dashboard read
    assert all(0 < float(q.split(":")[1]) < 0.1 for q in quantiles)  # "quantile:error" pairs
    on = args(8002)
    assert "--allow-metrics=true" in on and [a for a in on if a.startswith("--metrics-config")] == config
    off = args(0)
    assert "--allow-metrics=false" in off and not [a for a in off if a.startswith("--metrics-config")]


def test_docker_command(toy_repo):
    cmd = docker_command(toy_repo, http_port=18000, grpc_port=18001, metrics_port=18002, restricted_api_key="k")
    assert cmd[:2] == ["docker", "run"] and TRITON_CONTAINER_IMAGE in cmd
    assert TRITON_CONTAINER_IMAGE == "nvcr.io/nvidia/tritonserver:24.10-py3"
    joined = " ".join(cmd)
    assert "--gpus all" in joined and f"{toy_repo.resolve()}:/models:ro" in joined
    assert "127.0.0.1:18000:8000" in joined and "127.0.0.1:18001:8001" in joined and "127.0.0.1:18002:8002" in joined
    after_image = cmd[cmd.index(TRITON_CONTAINER_IMAGE) + 1:]
    assert after_image[0] == "tritonserver"
    assert "--model-repository=/models" in after_image and "--model-control-mode=explicit" in after_image
    assert "--load-model=fsrec" in after_image and "--http-address=0.0.0.0" in after_image
    assert any(a.startswith("--grpc-restricted-protocol=") and a.endswith("fsrec-admin-key=k") for a in after_image)
    assert "--metrics-config=summary_latencies=true" in after_image  # the container's Triton has them too


def test_print_docker_cli_hides_the_key(toy_repo, capsys, monkeypatch):
    from fsrec_serve.cli import main

    monkeypatch.setenv("FSREC_ADMIN_KEY", "super-secret")
    assert main(["serve", "--repository", str(toy_repo), "--print-docker"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("docker run") and TRITON_CONTAINER_IMAGE in out
    assert "super-secret" not in out and '"$FSREC_ADMIN_KEY"' in out


def test_error_lines_keep_the_reason_and_drop_gpu_noise():
    log = "\n".join([
        'E1128 18:03:13.159070 8769 server.cc:241] "CudaDriverHelper has not been initialized."',
        "Error: Failed to initialize NVML",
        'I1128 18:03:13 model_lifecycle.cc:1] "loading: fsrec:1"',
        "E1128 18:03:22 model_lifecycle.cc:642] \"failed to load 'fsrec' version 1: Internal: bad onnx\"",
        "| fsrec | 1 | UNAVAILABLE: Internal: bad onnx |",
        "error: creating server: Invalid argument - load failed for model 'fsrec'",
    ])  # fmt: skip
    lines = error_lines(log)
    assert len(lines) == 3 and "failed to load 'fsrec'" in lines[0] and lines[-1].startswith("error: creating server")


def test_cli_parsers_are_registered():
    from fsrec_serve.cli import build_parser

    p = build_parser()
    a = p.parse_args(["serve", "--repository", "r", "--http-port", "0", "--", "--log-verbose=1"])
    assert a.repository == "r" and a.http_port == 0 and a.model_control == "explicit"
    a = p.parse_args(["recommend", "--url", "http://h:1", "--history", "1", "2", "--k", "3"])
    assert a.history == ["1", "2"] and a.k == 3 and a.on_unknown == "drop"
    with pytest.raises(SystemExit):
        p.parse_args(["recommend", "--url", "h:1"])  # --history is required


# -- the admin key policy (ServerConfig) ---------------------------------------------------------
def test_generated_admin_key_file_is_private_and_reused(toy_repo, tmp_path):
    from fsrec_serve.serving import ServerConfig
    from fsrec_serve.serving.config import resolve_admin_key

    key_file = tmp_path / "state" / "admin.key"
    cfg = ServerConfig(toy_repo, admin_key_file=key_file)
    first = resolve_admin_key(cfg, "127.0.0.1")
    assert first.generated and first.path == key_file and len(first.key) >= 40
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.read_text().strip() == first.key
    again = resolve_admin_key(cfg, "::1")  # any loopback address; the same file is reused
    assert not again.generated and again.key == first.key
    given = resolve_admin_key(ServerConfig(toy_repo, restricted_api_key="k", admin_key_file=key_file), "0.0.0.0")
    assert given.key == "k" and given.path is None


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "myhost.example", "::"])
def test_non_loopback_bind_without_a_key_is_refused_unless_allowed(toy_repo, tmp_path, host, monkeypatch):
    from fsrec_serve.serving import ServerConfig
    from fsrec_serve.serving.config import resolve_admin_key

    monkeypatch.setenv("FSREC_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match="--allow-unrestricted"):
        resolve_admin_key(ServerConfig(toy_repo), host)
    assert not (tmp_path / "state" / "admin.key").exists()  # nothing generated for a refused start
    assert resolve_admin_key(ServerConfig(toy_repo, allow_unrestricted=True), host).key is None
    # a key file named explicitly is a key: read (or generated into it) for any address
    explicit = resolve_admin_key(ServerConfig(toy_repo, admin_key_file=tmp_path / "mine.key"), host)
    assert explicit.key and explicit.path == tmp_path / "mine.key"


def test_server_config_of_applies_overrides_and_checks_fields(toy_repo):
    from fsrec_serve.serving import ServerConfig

    cfg = ServerConfig.of(str(toy_repo), http_port=0)
    assert cfg.repository == toy_repo and cfg.http_port == 0 and cfg.model_control == "explicit"
    assert ServerConfig.of(cfg, grpc_port=5).grpc_port == 5 and cfg.grpc_port is None
    with pytest.raises(TypeError):
        ServerConfig.of(toy_repo, no_such_field=1)
    with pytest.raises(ConfigError, match="watch_interval_s"):
        ServerConfig(toy_repo, watch_interval_s=-1)
