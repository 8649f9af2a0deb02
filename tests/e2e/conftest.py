"""Shared fixtures for the end-to-end tests: a tiny model trained here on a slice of real
ML-100K, exported with Optimum, a cpu model repository, and ONE real tritonserver for the session
(free ports on 127.0.0.1, restricted admin APIs), torn down even when tests fail.

Fixtures other e2e files reuse:
- ``e2e_splits``: ML-100K leave-one-out splits;
- ``tiny_export``: the export folder (model.onnx, item_map.json, fsrec_meta.json, config.json);
- ``fsrec_repository``: the cpu repository (read-only: copy it with ``repository_copy`` to change it);
- ``triton_server``: the session's TritonServer (``.url_grpc``, ``.url_http``, ``.restricted_api_key``);
- ``server_factory``: start extra servers (stopped at the end of the test);
- ``ort_session`` / ``ort_topk``: in-process ONNX Runtime on the same graph;
- ``user_histories``: real users' histories as raw ids.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
ADMIN_KEY = "e2e-admin-key-123"
MAX_SEQ_LEN = 20  # tiny model: short histories keep every request cheap
MAX_TOP_K = 50


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


def _data_dir() -> Path:
    env = os.environ.get("FSREC_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def e2e_limits():
    """Constants of the session's model and server (``max_seq_len``, ``max_top_k``, ``admin_key``)."""
    from types import SimpleNamespace

    return SimpleNamespace(max_seq_len=MAX_SEQ_LEN, max_top_k=MAX_TOP_K, admin_key=ADMIN_KEY)


@pytest.fixture(scope="session")
def e2e_splits():
    data_dir = _data_dir()
    if not (data_dir / "ml-100k" / "u.data").exists():
        pytest.skip(f"ML-100K not found under {data_dir} (set FSREC_DATA_DIR)")
    from fsrec_serve.data import SplitConfig, load_dataset, make_splits

    return make_splits(load_dataset("ml-100k", data_dir), SplitConfig(seed=0, cold_user_frac=0.0, cold_item_frac=0.0))


@pytest.fixture(scope="session")
def triton_available():
    from fsrec_serve.errors import TritonNotFoundError
    from fsrec_serve.serving import find_triton

    try:
        return find_triton()
    except TritonNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def tiny_export(e2e_splits, tmp_path_factory):
    """Train a tiny FsRec model for a few seconds on 300 real users, export it to ONNX."""
    import torch

    from exporters import export_onnx
    from fsrec_serve.model import FsRecConfig
    from fsrec_serve.training import TrainConfig, pretrain

    torch.manual_seed(0)
    cfg = FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_seq_len=MAX_SEQ_LEN)  # fmt: skip
    tc = TrainConfig(epochs=1, batch_size=128, progress=False, device="cpu", patience=0,
                     max_train_seconds=4.0, seed=0)  # fmt: skip
    res = pretrain(e2e_splits, cfg, tc, train_sequences=e2e_splits.loo_train()[:300],
                   valid_examples=e2e_splits.loo_valid()[:32])  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_export")
    export_onnx(res.model, out, max_top_k=MAX_TOP_K, source="tests/e2e tiny model")
    return out


@pytest.fixture(scope="session")
def fsrec_repository(tiny_export, tmp_path_factory) -> Path:
    from exporters import build_model_repository

    repo = tmp_path_factory.mktemp("model_repository")
    build_model_repository(repo, tiny_export, target="cpu", version=1)
    return repo


@pytest.fixture
def repository_copy(fsrec_repository, tmp_path):
    """A private copy of the session repository that a test may change (new versions, ...)."""

    def make(name: str = "repo") -> Path:
        dst = tmp_path / name
        shutil.copytree(fsrec_repository, dst)
        return dst

    return make


def _kill_group(server) -> None:
    if server.pid:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def triton_server(fsrec_repository, triton_available, request, tmp_path_factory):
    """One real tritonserver for the whole session, admin APIs behind ADMIN_KEY."""
    from fsrec_serve.serving import serve

    log_file = tmp_path_factory.mktemp("triton_logs") / "session-tritonserver.log"
    server = serve(fsrec_repository, http_port=0, grpc_port=0, metrics_port=0, restricted_api_key=ADMIN_KEY,
                   startup_timeout=180, stop_timeout=15, log_file=log_file)  # fmt: skip

    def finalize():
        try:
            server.stop()
        finally:
            _kill_group(server)  # nothing of the group may outlive the session

    request.addfinalizer(finalize)
    return server


@pytest.fixture
def server_factory(triton_available, request, tmp_path):
    """Start extra servers: ``server_factory(repo, **serve_kwargs)``; all stopped after the test."""
    from fsrec_serve.serving import serve

    started = []

    def start(repo, **kw):
        kw.setdefault("log_file", tmp_path / f"tritonserver-{len(started)}-{time.monotonic_ns()}.log")
        kw.setdefault("http_port", 0)
        kw.setdefault("grpc_port", 0)
        kw.setdefault("metrics_port", 0)
        kw.setdefault("startup_timeout", 180)
        s = serve(repo, **kw)
        started.append(s)
        return s

    def finalize():
        for s in started:
            try:
                s.stop()
            finally:
                _kill_group(s)

    request.addfinalizer(finalize)
    return start


@pytest.fixture(scope="session")
def ort_session(tiny_export):
    from exporters import make_session

    return make_session(tiny_export, intra_op_threads=1)


@pytest.fixture(scope="session")
def user_histories(e2e_splits) -> list[list[str]]:
    """Raw-id histories of 24 real users (lengths 5..40, some longer than max_seq_len)."""
    im = e2e_splits.item_map
    out = []
    for ex in e2e_splits.loo_test()[:200:8]:
        out.append(im.raws(ex.history[-(5 + len(out) % 36):]))
    return out


@pytest.fixture(scope="session")
def ort_topk(ort_session, e2e_splits):
    """raw-id histories, k -> list of (raw ids, scores) from in-process ONNX Runtime."""
    import numpy as np

    from exporters import run_topk
    from fsrec_serve.idmap import pad_left

    im = e2e_splits.item_map

    def run(histories, k):
        idx = [im.indices(h)[-MAX_SEQ_LEN:] for h in histories]
        items, scores = run_topk(ort_session, pad_left(idx, MAX_SEQ_LEN))
        return [(im.raws(i[:k].tolist()), np.asarray(s[:k], dtype=np.float64).tolist()) for i, s in zip(items, scores)]

    return run


def wait_for(predicate, timeout_s: float = 10.0, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
