"""Operations against a real tritonserver (issue 7): rollout under load, restricted model
control, broken versions refused while serving goes on, a killed server and a recovering client,
Prometheus metrics.

Each test starts its own server on free 127.0.0.1 ports (``server_factory`` stops it, and kills
its process group, even when the test fails) and bounds its load loop in time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fsrec_serve.client import RecommenderClient
from fsrec_serve.errors import AuthorizationError, RolloutError, ServerUnavailableError
from fsrec_serve.operations.control import ModelControl
from fsrec_serve.operations.rollout import RolloutConfig, pin_versions, rollout

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "ops-e2e-key-7"
MODEL = "fsrec"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_export(e2e_splits, e2e_limits, tmp_path_factory):
    """Another tiny model (other seed, a few seconds of training): version 2 of the rollouts."""
    import torch

    from exporters import export_onnx
    from fsrec_serve.model import FsRecConfig
    from fsrec_serve.training import TrainConfig, pretrain

    torch.manual_seed(1)
    cfg = FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_seq_len=e2e_limits.max_seq_len)
    tc = TrainConfig(epochs=1, batch_size=128, progress=False, device="cpu", patience=0,
                     max_train_seconds=4.0, seed=1)
    res = pretrain(e2e_splits, cfg, tc, train_sequences=e2e_splits.loo_train()[300:600],
                   valid_examples=e2e_splits.loo_valid()[:32])
    out = tmp_path_factory.mktemp("export_v2")
    export_onnx(res.model, out, max_top_k=e2e_limits.max_top_k, source="ops e2e v2")
    return out


@pytest.fixture(scope="module")
def random_export(e2e_splits, e2e_limits, tmp_path_factory):
    """An untrained model: the accuracy guard must refuse it against the trained version."""
    import torch

    from exporters import export_onnx
    from fsrec_serve.model import FsRecConfig, FsRecModel

    torch.manual_seed(2)
    cfg = FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_seq_len=e2e_limits.max_seq_len)
    model = FsRecModel(cfg)
    model.item_map = e2e_splits.item_map
    out = tmp_path_factory.mktemp("export_random")
    export_onnx(model, out, max_top_k=e2e_limits.max_top_k, source="ops e2e random")
    return out


@pytest.fixture
def live(repository_copy, server_factory, tmp_path):
    """A repository served IN PLACE (as in the container: tritonserver reads the folder the
    rollout writes to), restricted admin APIs, version 1 loaded."""
    from exporters import runtime_repository

    src = repository_copy("src")
    repo = runtime_repository(src, tmp_path / "live", execution_env_path=sys.prefix, copy_files=True)
    server = server_factory(repo, restricted_api_key=ADMIN_KEY, materialize=False, stop_timeout=10, exit_timeout_s=1)
    return server, Path(repo)


def _examples_favoring(export_dir, splits, n: int, max_seq_len: int) -> list:
    """Validation examples whose target is ``export_dir``'s own top-1 item: that model scores
    NDCG@10 = 1 on them, so the accuracy guard's verdict is deterministic (tiny models trained for
    seconds are too weak for real targets to separate them)."""
    from exporters import make_session, run_topk
    from fsrec_serve.data.splits import Example
    from fsrec_serve.idmap import pad_left

    hist = [e.history[-max_seq_len:] for e in splits.loo_valid()[:n]]
    top, _ = run_topk(make_session(export_dir), pad_left(hist, max_seq_len))
    return [Example(f"u{i}", h, int(t[0])) for i, (h, t) in enumerate(zip(hist, top))]


def _histories(splits, n: int, max_seq_len: int) -> np.ndarray:
    from fsrec_serve.idmap import pad_left

    return pad_left([e.history[-max_seq_len:] for e in splits.loo_test()[:n]], max_seq_len)


class LoadLoop:
    """Bounded background load: ``threads`` clients (no retries: every failure counts) send the
    same histories until stopped or ``max_s`` passed. Records (time, version | error)."""

    def __init__(self, url: str, x: np.ndarray, protocol: str = "grpc", threads: int = 2,
                 pause_s: float = 0.005, max_s: float = 50.0, **client_kw):
        self.x, self.pause_s, self.max_s = x, pause_s, max_s
        client_kw.setdefault("timeout_s", 10.0)
        client_kw.setdefault("retries", 0)
        self.client = RecommenderClient(url, protocol=protocol, model_name=MODEL, **client_kw)
        self.records: list[tuple[float, str, np.ndarray | None]] = []
        self.spans: list[tuple[float, float, str]] = []  # (sent, answered, version | error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._lock = threading.Lock()

    def _run(self, i: int) -> None:
        end = time.monotonic() + self.max_s
        row = 0
        while not self._stop.is_set() and time.monotonic() < end:
            b = self.x[row % len(self.x):row % len(self.x) + 2]
            row += 2
            sent = time.monotonic()
            try:
                items, _, version = self.client.infer_indices(b)
                rec = (time.monotonic(), version, items[0].copy())
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                rec = (time.monotonic(), f"ERROR {type(e).__name__}: {e}", None)
            with self._lock:
                self.records.append(rec)
                self.spans.append((sent, rec[0], rec[1]))
            time.sleep(self.pause_s)

    def __enter__(self) -> "LoadLoop":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.client.close()

    def errors(self) -> list[str]:
        return [v for _, v, _ in self.records if v.startswith("ERROR")]

    def versions(self) -> list[str]:
        return [v for _, v, _ in self.records if not v.startswith("ERROR")]


def _admin(server, protocol: str = "http", key: str | None = ADMIN_KEY) -> ModelControl:
    url = server.url_http if protocol == "http" else server.url_grpc
    return ModelControl(url, protocol=protocol, admin_key=key, model_name=MODEL, server_log=server.log_text)


# -- rollout under load ---------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_rollout_under_load_zero_failures_and_switch(live, second_export, e2e_splits, e2e_limits):
    server, repo = live
    from exporters import make_session, run_topk

    x = _histories(e2e_splits, 16, e2e_limits.max_seq_len)
    want_v2, _ = run_topk(make_session(second_export), x[:1])  # what version 2 must answer for x[0]
    want_v1, _ = run_topk(make_session(repo / MODEL / "1"), x[:1])
    assert not np.array_equal(want_v1[0][:10], want_v2[0][:10]), "the two versions must be distinguishable"

    t0 = time.monotonic()
    with _admin(server) as control, LoadLoop(server.url_grpc, x, max_s=60) as load:
        time.sleep(1.0)  # traffic on version 1 first
        report = rollout(second_export, repo, control, RolloutConfig(guard_users=64, smoke_users=8),
                         valid_examples=_examples_favoring(second_export, e2e_splits, 64, e2e_limits.max_seq_len))
        time.sleep(1.5)  # traffic on version 2
    seconds = time.monotonic() - t0
    print("rollout:", json.dumps({"seconds": round(report.seconds, 2), "steps": report.steps,
                                  "requests": len(load.records), "errors": len(load.errors()),
                                  "smoke": report.smoke}, default=str))
    assert report.status == "rolled-out" and report.version == 2, report
    assert report.previous_versions == [1] and report.serving_versions == [2]
    assert report.guard is not None and report.guard["passed"] and report.guard["batch_invariance"]["invariant"]
    assert report.guard["ndcg_candidate"] == pytest.approx(1.0)
    assert report.smoke["after_swap"]["answered_by"] == "2"
    steps = [s["step"] for s in report.steps]
    assert steps == ["inspect", "guard", "build", "load candidate", "smoke candidate", "unload candidate",
                     "publish", "swap", "verify", "persist"], steps

    # zero failed requests over the whole rollout; answers switch from 1 to 2 and stay there
    assert load.errors() == [], load.errors()[:5]
    versions = load.versions()
    assert len(versions) > 50 and versions[0] == "1" and versions[-1] == "2", (len(versions), versions[:3], versions[-3:])
    # once a version-2 answer has arrived, no request SENT after that moment is answered by
    # version 1 (a request already in flight on a version-1 instance may still finish later)
    first2 = min(done for _, done, v in load.spans if v == "2")
    late_v1 = [(sent, done) for sent, done, v in load.spans if v == "1" and sent > first2]
    assert not late_v1, f"answers from version 1 to requests sent after version 2 took over: {late_v1[:3]}"
    # the content switched too: x[0]'s answers after the switch are version 2's top items
    served = [it for _, v, it in load.records if v == "2" and it is not None]
    assert any(np.array_equal(it[:10], want_v2[0][:10]) for it in served)
    assert seconds < 60, f"rollout scenario took {seconds:.0f} s"

    # the server state and the repository agree: only version 2 loaded, policy pinned on disk
    with _admin(server) as control:
        assert control.ready_versions() == [2]
        assert "__candidate" not in json.dumps([s.__dict__ for s in control.index()])
    cfg_text = (repo / MODEL / "config.pbtxt").read_text()
    assert re.search(r"specific\s*\{\s*versions:\s*2\s*\}", cfg_text), cfg_text
    assert (repo / MODEL / "2" / "model.onnx").is_file()

    # manual rollback to version 1 (pin_versions), still under load, still zero failures
    with _admin(server) as control, LoadLoop(server.url_grpc, x, max_s=30) as load2:
        time.sleep(0.5)
        assert pin_versions(repo, control, [1]) == [1]
        time.sleep(1.0)
    assert load2.errors() == [] and load2.versions()[-1] == "1"


@pytest.mark.timeout(120)
def test_rollout_with_publish_to_a_runtime_copy(repository_copy, server_factory, second_export, e2e_splits,
                                                e2e_limits):
    """A server started with serve() reads a runtime copy: rollout writes the source repository
    and publishes it with server.refresh_repository."""
    src = repository_copy("src")
    server = server_factory(src, restricted_api_key=ADMIN_KEY, exit_timeout_s=1)
    x = _histories(e2e_splits, 4, e2e_limits.max_seq_len)
    with RecommenderClient.for_server(server, "grpc", admin=True, retries=0) as admin:
        control = ModelControl(client=admin)
        report = rollout(second_export, src, control, RolloutConfig(smoke_users=4, keep_previous=True),
                         publish=server.refresh_repository)
        assert report.serving_versions == [1, 2]  # keep_previous: 1 stays loaded, reachable by number
        assert admin.infer_indices(x)[2] == "2"
    with RecommenderClient.for_server(server, "grpc", model_version=1) as v1:
        assert v1.infer_indices(x)[2] == "1"
    assert (src / MODEL / "2" / "model.onnx").is_file()
    assert re.search(r"versions:\s*1\s+versions:\s*2", (src / MODEL / "config.pbtxt").read_text())


# -- restricted model control ----------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_needs_the_key_inference_does_not(live, protocol, e2e_splits, e2e_limits):
    server, repo = live
    x = _histories(e2e_splits, 2, e2e_limits.max_seq_len)
    for key in (None, "wrong-key"):
        with _admin(server, protocol, key=key) as anon:
            with pytest.raises(AuthorizationError, match="admin key"):
                anon.index()
            with pytest.raises(AuthorizationError):
                anon.load_versions([1], base_config={"name": MODEL})
            with pytest.raises(AuthorizationError):
                anon.client.unload_model(MODEL)
            # inference, health and metadata stay open without the key
            assert anon.client.is_ready()
            assert anon.client.infer_indices(x)[2] == "1"
    with _admin(server, protocol) as admin:
        assert [(s.name, s.version, s.state) for s in admin.index()] == [(MODEL, 1, "READY")]
        assert admin.load_versions([1]) == [1]  # reload with the key: allowed, keeps serving
        assert admin.client.infer_indices(x)[2] == "1"
    if protocol == "http":  # the raw endpoint: 403 with Triton's message, 200 with the header
        url = f"{server.url_http}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5)
        assert e.value.code == 403 and "fsrec-admin-key" in e.value.read().decode()
        req = urllib.request.Request(url, method="POST", headers={"fsrec-admin-key": ADMIN_KEY})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())[0]["name"] == MODEL


def test_rollout_without_the_key_is_refused_and_changes_nothing(live, second_export):
    server, repo = live
    with _admin(server, key=None) as anon:
        with pytest.raises(RolloutError, match="admin key") as e:
            rollout(second_export, repo, anon)
    assert e.value.report.status == "refused" and e.value.report.failed_step == "inspect"
    assert sorted(p.name for p in (repo / MODEL).iterdir() if p.name.isdigit()) == ["1"]


def test_cli_models_and_rollout(live, second_export, capsys, monkeypatch):
    from fsrec_serve.cli import main

    server, repo = live
    monkeypatch.delenv("FSREC_ADMIN_KEY", raising=False)
    base = ["--url", server.url_http, "--protocol", "http"]
    assert main(["models", "list", *base]) == 2
    assert "admin key" in capsys.readouterr().err
    assert main(["models", "list", *base, "--admin-key", ADMIN_KEY]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fsrec\s+1\s+READY", out, re.MULTILINE), out
    assert main(["rollout", str(second_export), "--repository", str(repo), *base, "--admin-key", ADMIN_KEY]) == 2
    assert "--guard-dataset" in capsys.readouterr().err  # the guard is not skipped silently
    monkeypatch.setenv("FSREC_ADMIN_KEY", ADMIN_KEY)
    assert main(["rollout", str(second_export), "--repository", str(repo), *base, "--no-guard",
                 "--smoke-users", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "rolled-out" and report["serving_versions"] == [2]
    assert main(["models", "load", *base, "--version", "1", "--repository", str(repo)]) == 0  # roll back
    assert json.loads(capsys.readouterr().out)["ready_versions"] == [1]
    assert main(["models", "list", *base, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows if r["state"] == "READY"] == [1]


# -- broken versions are refused while the serving version keeps answering ------------------------
@pytest.mark.timeout(150)
def test_corrupt_onnx_and_bad_config_fail_clearly_while_serving(live, second_export, random_export, e2e_splits,
                                                                e2e_limits, tmp_path):
    server, repo = live
    x = _histories(e2e_splits, 8, e2e_limits.max_seq_len)
    corrupt = tmp_path / "corrupt_export"
    shutil.copytree(second_export, corrupt)
    data = (corrupt / "model.onnx").read_bytes()
    (corrupt / "model.onnx").write_bytes(b"\x00garbage\xff" * 64 + data[: len(data) // 3])  # truncated + junk

    t0 = time.monotonic()
    with _admin(server) as control, LoadLoop(server.url_grpc, x, max_s=80) as load:
        time.sleep(0.5)
        # 1. a corrupted ONNX file: the candidate fails to load, with Triton's / ONNX Runtime's message
        with pytest.raises(RolloutError) as e1:
            rollout(corrupt, repo, control)
        r1 = e1.value.report
        assert r1.status == "refused" and r1.failed_step == "load candidate", r1
        msg = str(e1.value)
        assert "fsrec__candidate" in msg and "version 2" in msg, msg
        assert re.search(r"protobuf|parsing|invalid|load model", msg, re.IGNORECASE), msg
        assert "Serving version(s): [1]" in msg

        # 2. a bad config for the new version (preferred batch larger than max_batch_size)
        with pytest.raises(RolloutError) as e2:
            rollout(second_export, repo, control, RolloutConfig(
                config_overrides={"dynamic_batching": {"preferred_batch_size": [4096]}}))
        r2 = e2.value.report
        assert r2.status == "refused" and r2.failed_step == "load candidate", r2
        # Triton's API only says "failed to poll"; the server's own reason is quoted from its log
        assert "preferred size must be <= max batch size" in str(e2.value), str(e2.value)
        # a config field that does not exist: refused before Triton sees it, naming the field
        with pytest.raises(RolloutError, match="max_bach_size"):
            rollout(second_export, repo, control, RolloutConfig(config_overrides={"max_bach_size": 8}))

        # 3. an export whose I/O does not fit the served model: refused before touching Triton
        wrong = tmp_path / "wrong_io"
        shutil.copytree(second_export, wrong)
        meta = json.loads((wrong / "fsrec_meta.json").read_text())
        meta["max_seq_len"] = e2e_limits.max_seq_len + 5
        (wrong / "fsrec_meta.json").write_text(json.dumps(meta))
        with pytest.raises(RolloutError, match="max_seq_len") as e3:
            rollout(wrong, repo, control)
        assert e3.value.report.failed_step == "inspect"

        # 4. the accuracy guard refuses an untrained model against the trained serving version
        with pytest.raises(RolloutError, match="NDCG@10") as e4:
            rollout(random_export, repo, control,
                    valid_examples=_examples_favoring(repo / MODEL / "1", e2e_splits, 64, e2e_limits.max_seq_len))
        assert e4.value.report.failed_step == "guard"
        for e in (e1, e2, e3, e4):
            print("refused:", e.value.report.failed_step, "|", e.value)
        time.sleep(0.5)
        assert control.ready_versions() == [1]
        assert not any(s.name.endswith("__candidate") and s.state == "READY" for s in control.index())
    assert time.monotonic() - t0 < 90
    # version 1 answered every request throughout; nothing was added to the repository
    assert load.errors() == [], load.errors()[:3]
    assert set(load.versions()) == {"1"} and len(load.versions()) > 20
    assert sorted(p.name for p in (repo / MODEL).iterdir() if p.name.isdigit()) == ["1"]
    assert "specific" not in (repo / MODEL / "config.pbtxt").read_text()


# -- a killed server: clear errors within the timeout, recovery with retries ------------------------
@pytest.mark.timeout(150)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_killed_under_load_then_restarted(live, protocol, e2e_splits, e2e_limits):
    server, repo = live
    x = _histories(e2e_splits, 4, e2e_limits.max_seq_len)
    url = server.url_grpc if protocol == "grpc" else server.url_http
    timeout_s = 2.0
    with LoadLoop(url, x, protocol=protocol, threads=2, pause_s=0.01, max_s=60, timeout_s=timeout_s) as load:
        time.sleep(1.0)
        os.killpg(server.pid, signal.SIGKILL)  # tritonserver and its python-backend stubs
        server._proc.wait(timeout=10)  # noqa: SLF001 - the test owns the process
        killed_at = time.monotonic()

        # no retries: a clear error, well within the timeout
        with RecommenderClient(url, protocol=protocol, model_name=MODEL, timeout_s=timeout_s, retries=0) as c:
            t = time.monotonic()
            with pytest.raises(ServerUnavailableError) as e:
                c.infer_indices(x[:1])
            assert time.monotonic() - t < timeout_s + 0.5
            assert re.search(r"unavailable|cannot reach|running", str(e.value), re.IGNORECASE), str(e.value)
        # with retries and backoff: gives up after its attempts, bounded by timeout + backoff
        with RecommenderClient(url, protocol=protocol, model_name=MODEL, timeout_s=timeout_s, retries=3,
                               backoff_s=0.1, backoff_max_s=0.4) as c:
            t = time.monotonic()
            with pytest.raises(ServerUnavailableError, match="gave up after 4 attempt"):
                c.infer_indices(x[:1])
            assert time.monotonic() - t < 4 * timeout_s + 0.1 + 0.2 + 0.4 + 1.0

        # a patient client: its request started while the server is down succeeds once it is back
        patient = RecommenderClient(url, protocol=protocol, model_name=MODEL, timeout_s=timeout_s, retries=40,
                                    backoff_s=0.1, backoff_max_s=0.5)
        result: dict = {}

        def call():
            t1 = time.monotonic()
            try:
                result["version"] = patient.infer_indices(x[:1])[2]
            except Exception as err:  # noqa: BLE001
                result["error"] = err
            result["seconds"] = time.monotonic() - t1

        th = threading.Thread(target=call)
        th.start()
        time.sleep(1.5)
        restart_at = time.monotonic()
        server.start()
        server.wait_ready(timeout=60)
        restarted_at = time.monotonic()
        th.join(timeout=40)
        patient.close()
        time.sleep(1.0)  # the load loop must answer again after the restart
    assert result.get("version") == "1", result
    assert result["seconds"] >= 1.0  # it really waited through the outage
    errors_before = [t for t, v, _ in load.records if v.startswith("ERROR") and t < killed_at - 0.2]
    assert errors_before == []
    down = [v for t, v, _ in load.records if killed_at <= t <= restart_at]
    assert down and all(v.startswith("ERROR") for v in down[2:]), down[:4]
    assert all("ServerUnavailableError" in v or "RequestTimeoutError" in v for v in down if v.startswith("ERROR"))
    after = [v for t, v, _ in load.records if t > restarted_at + 0.5]
    assert after and after[-1] == "1", after[-3:]


# -- metrics ---------------------------------------------------------------------------------------
def test_prometheus_endpoint_has_every_metric_the_rules_use(live, e2e_splits, e2e_limits):
    import yaml

    server, _ = live
    x = _histories(e2e_splits, 4, e2e_limits.max_seq_len)
    with RecommenderClient.for_server(server, "grpc") as c:
        for _ in range(5):
            c.infer_indices(x)
    rules = yaml.safe_load((ROOT / "docker" / "prometheus-rules.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    names = sorted(set(re.findall(r"\bnv_[a-z_]+\b", exprs)))
    assert len(names) >= 6, names
    deadline = time.monotonic() + 10
    while True:  # the endpoint refreshes every metrics-interval (2 s by default)
        with urllib.request.urlopen(server.url_metrics, timeout=5) as r:
            text = r.read().decode()
        ok = re.search(r'^nv_inference_request_success\{[^}]*model="fsrec"[^}]*\} ([0-9.e+]+)$', text, re.MULTILINE)
        if ok and float(ok.group(1)) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [n for n in names if not re.search(rf"^{n}\{{[^}}]*model=\"fsrec\"", text, re.MULTILINE)]
    assert not missing, f"metrics used by docker/prometheus-rules.yml that Triton does not export: {missing}"
    assert ok and float(ok.group(1)) >= 5
