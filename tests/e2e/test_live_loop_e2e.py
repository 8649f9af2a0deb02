"""The live loop end to end: events through Triton's fsrec_events into the store, the learner
fitting per-user parameters, fsrec_user answering by user id (lookup, then the ranker by BLS) —
with a real tritonserver, a real SQLite file and a real redis-server; kill -9 of each part."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

TOP_K = 20


@pytest.fixture(scope="module")
def live(e2e_splits, triton_available, tmp_path_factory):
    """A tiny trained model (saved + exported), a repository with the ranker and the front models."""
    import torch

    from exporters import build_model_repository, export_onnx
    from exporters.user_repository import build_user_models, popularity_of
    from fsrec_serve.model import FsRecConfig, model_fingerprint
    from fsrec_serve.training import TrainConfig, pretrain

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("live")
    cfg = FsRecConfig(num_items=len(e2e_splits.item_map), hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_seq_len=50)
    res = pretrain(e2e_splits, cfg, TrainConfig(epochs=1, batch_size=128, progress=False, device="cpu", patience=0,
                                                max_train_seconds=6.0, seed=0),
                   train_sequences=e2e_splits.loo_train()[:400], valid_examples=e2e_splits.loo_valid()[:32])
    model = res.model.eval()
    model.item_map = e2e_splits.item_map
    model.save_pretrained(tmp / "served")
    exp = export_onnx(model, tmp / "export", max_top_k=TOP_K)
    repo = tmp / "repo"
    build_model_repository(repo, exp.output_dir, target="cpu", version=1)
    build_user_models(repo, popularity_of([s.items for s in e2e_splits.loo_train()], TOP_K))
    from types import SimpleNamespace

    return SimpleNamespace(repo=repo, model_dir=tmp / "served", fingerprint=model_fingerprint(model),
                           item_map=e2e_splits.item_map, seqs=e2e_splits.loo_train(), tmp=tmp)


def _history(live, n: int, user: int = 0) -> list[str]:
    return live.item_map.raws(live.seqs[user].items[:n])


def _learner(live, store_url: str):
    from fsrec_serve.learner import Learner, LearnerConfig

    return Learner(LearnerConfig(model_dir=live.model_dir, store=store_url, fit_interval_s=0.0))


def _key(user: str) -> str:
    from fsrec_serve.store import UserKeyer

    return UserKeyer().key(user)


@pytest.mark.parametrize("ranking", ["onnxruntime", "bls"])
def test_events_then_recommend_by_user_equals_the_item_path(live, server_factory, tmp_path, ranking):
    """By user id (in-process ranking, or a BLS call of the ranker) = by item ids with the same
    history and parameters."""
    import shutil

    from exporters.user_repository import UserModelsSpec, build_user_models, popularity_of
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.store import open_store

    repo = tmp_path / "repo"
    shutil.copytree(live.repo, repo)
    build_user_models(repo, popularity_of([s.items for s in live.seqs], TOP_K),
                      UserModelsSpec(max_top_k=TOP_K, ranking=ranking, length_buckets=(16, 32, 50)))
    store_url = str(tmp_path / "store.sqlite3")
    server = server_factory(repo, store=store_url)
    raws = _history(live, 8)
    with RecommenderClient.for_server(server) as c:
        before = c.recommend_for_user("alice", k=10)
        assert before.source == "popularity" and len(before.items) == 10
        flags = c.record_many([("alice", r, 1_000.0 + j, f"alice-{j}") for j, r in enumerate(raws)])
        assert flags == [True] * 8
        assert c.record("alice", raws[0], 1_000.0, "alice-0") is False  # the same event id: stored once
        assert c.record("alice", "an-item-the-model-never-saw", 999.0, "alice-new") is True  # kept, counted
        learner = _learner(live, store_url)
        stats = learner.run(until_idle=True, max_seconds=60)
        assert stats.events == 9 and stats.users_refit == 1
        with open_store(store_url) as store:
            st = store.states([_key("alice")])[_key("alice")]
            assert store.counts()["new_item_events"] == 1
        assert st.event_count == 9 and st.fingerprint == live.fingerprint  # the new item: counted, not in history
        assert live.item_map.raws(st.history) == raws
        after = c.recommend_for_user("alice", k=10)
        assert after.source in ("personal", "history") and after.model_version == "1"
        params = st.params if after.source == "personal" else None
        ref = c.recommend(raws, k=10, user_params=params)  # the same history and parameters by item ids
        assert after.items == ref.items
        np.testing.assert_allclose(after.scores, ref.scores, atol=1e-4)
        assert not set(after.items) & set(raws)  # the user's own items are never recommended


def test_unknown_user_recent_items_and_stale_parameters(live, server_factory, tmp_path):
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.store import open_store

    store_url = str(tmp_path / "store.sqlite3")
    server = server_factory(live.repo, store=store_url)
    raws = _history(live, 5, user=3)
    with RecommenderClient.for_server(server) as c:
        cold = c.recommend_for_user("nobody", k=10, recent_items=raws)
        assert cold.source == "history" and cold.items == c.recommend(raws, k=10).items
        with open_store(store_url) as store:  # parameters of ANOTHER model: must never be served
            store.append([__import__("fsrec_serve.store", fromlist=["Event"]).Event("s-1", _key("stale"), 1, 5.0)])
            store.apply("probe", store.pending("probe"))
            store.put_params({_key("stale"): np.full(32, 5.0, dtype=np.float32)}, "0123456789abcdef", time.time())
        stale = c.recommend_for_user("stale", k=10)
        assert stale.source == "history"
        assert stale.items == c.recommend(live.item_map.raws([1]), k=10).items


def test_bad_requests_are_refused_and_the_server_stays_up(live, server_factory, tmp_path):
    import tritonclient.grpc as grpcclient

    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.errors import InvalidRequestError

    server = server_factory(live.repo, store=str(tmp_path / "store.sqlite3"))
    with RecommenderClient.for_server(server) as c:
        for bad in ("", "x" * 10_000, b"\xff\xfe"):
            with pytest.raises(InvalidRequestError):
                c.recommend_for_user(bad)
        with pytest.raises(InvalidRequestError, match="at most"):
            c.recommend_for_user("u", recent_items=["1"] * 10_000)
    raw = grpcclient.InferenceServerClient(server.url_grpc)

    def send(user: bytes, recent=None):
        inputs = [grpcclient.InferInput("user_id", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[user]], dtype=object))
        if recent is not None:
            inputs.append(grpcclient.InferInput("recent_items", list(recent.shape), "INT64"))
            inputs[1].set_data_from_numpy(recent)
        return raw.infer("fsrec_user", inputs)

    for user, recent, message in ((b"", None, "empty"), (b"x" * 10_000, None, "at most 256"),
                                  (b"\xff\xfe", None, "UTF-8"),
                                  (b"u", np.ones((1, 10_000), dtype=np.int64), "at most 1024")):
        with pytest.raises(Exception, match=message) as err:
            send(user, recent)
        assert "x" * 300 not in str(err.value)  # the raw id is never echoed
    assert send(b"fine").as_numpy("source")[0, 0] == b"popularity"
    assert raw.is_server_live()


def test_redis_store_down_answers_unavailable_and_recovers(live, server_factory, tmp_path):
    from redis_server import redis_server_binary, running_redis

    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.errors import FsRecError

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it as root)")
    with running_redis(tmp_path / "redis") as rs:
        server = server_factory(live.repo, store=rs.url)
        raws = _history(live, 6, user=5)
        with RecommenderClient.for_server(server, retries=0) as c:
            assert c.record_many([("rita", r, 10.0 + j, f"rita-{j}") for j, r in enumerate(raws[:3])]) == [True] * 3
            rs.kill()
            with pytest.raises(FsRecError, match="redis"):
                c.recommend_for_user("rita")
            with pytest.raises(FsRecError, match="redis"):
                c.record("rita", raws[3], 13.0, "rita-3")
            assert c.is_live()
            rs.restart()
            assert c.record_many([("rita", r, 10.0 + j, f"rita-{j}") for j, r in enumerate(raws)]) == \
                [False] * 3 + [True] * 3  # the first three survived the kill (append-only file)
            learner = _learner(live, rs.url)
            assert learner.run(until_idle=True, max_seconds=60).events == 6
            assert c.recommend_for_user("rita").source in ("personal", "history")


def _learn_cmd(live, store_url: str) -> list[str]:
    return [sys.executable, "-m", "fsrec_serve.cli", "learn", "--model-dir", str(live.model_dir), "--store",
            store_url, "--fit-interval", "0", "--metrics-port", "-1"]


def test_kill9_of_learner_and_tritonserver_loses_no_event_and_applies_none_twice(live, server_factory, tmp_path):
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.store import open_store

    store_url = str(tmp_path / "store.sqlite3")
    server = server_factory(live.repo, store=store_url)
    users = [f"user-{u}" for u in range(12)]
    sent: dict = {u: 0 for u in users}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    learner = subprocess.Popen(_learn_cmd(live, store_url), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with RecommenderClient.for_server(server) as c:
            for round_ in range(6):
                batch = []
                for j, u in enumerate(users):
                    items = _history(live, 30, user=j)
                    batch += [(u, items[(round_ * 5 + i) % len(items)], float(round_ * 5 + i), f"{u}-{round_}-{i}")
                              for i in range(5)]
                assert all(c.record_many(batch))
                for u, *_ in batch:
                    sent[u] += 1
                if round_ in (1, 3):  # kill -9 the learner mid-stream and start it again
                    time.sleep(0.5)
                    os.killpg(learner.pid, signal.SIGKILL)
                    learner.wait()
                    learner = subprocess.Popen(_learn_cmd(live, store_url), env=env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, start_new_session=True)
        os.killpg(server.pid, signal.SIGKILL)  # tritonserver too: what it acknowledged is in the store
        deadline = time.monotonic() + 120
        with open_store(store_url) as store:
            while store.lag("learner")[0] and time.monotonic() < deadline:
                time.sleep(0.5)
            assert store.lag("learner")[0] == 0
            states = store.states([_key(u) for u in users])
            assert {u: states[_key(u)].event_count for u in users} == sent  # none lost, none twice
            assert store.counts()["events"] == sum(sent.values())
    finally:
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait()


def test_refine_rolls_out_a_new_version_and_parameters_follow_its_fingerprint(live, server_factory, tmp_path):
    """A re-fine-tune that passes its guards becomes version 2 through the guarded rollout; the
    refit users get parameters for the new fingerprint; a user refit only for the old model is
    answered by version 2 WITHOUT parameters (never stale ones)."""
    import shutil

    from fsrec_serve.adaptation.online import RefineConfig
    from fsrec_serve.client import RecommenderClient
    from fsrec_serve.learner import Learner, LearnerConfig
    from fsrec_serve.store import open_store

    repo = tmp_path / "repo"
    shutil.copytree(live.repo, repo)
    store_url = str(tmp_path / "store.sqlite3")
    server = server_factory(repo, store=store_url, restricted_api_key="learner-test-key")
    os.environ["FSREC_ADMIN_KEY"] = "learner-test-key"
    try:
        cfg = LearnerConfig(model_dir=live.model_dir, store=store_url, fit_interval_s=0.0, min_refine_users=5,
                            refine=RefineConfig(epochs=1, tolerance=1.0, min_forgetting=0.0, forgetting_users=10),
                            server_url=server.url_grpc, repository=server.runtime_repository,
                            work_dir=tmp_path / "learner")
        with RecommenderClient.for_server(server) as c:
            c.record_many([("old-user", r, float(j), f"old-{j}") for j, r in enumerate(_history(live, 6, user=40))])
            first = Learner(cfg)  # fits old-user for model 1, then stops
            first.run(until_idle=True, max_seconds=60)
            first.close()
            old_fp = first.fingerprint
            learner = Learner(cfg)  # a restarted learner: old-user is not active for it
            users = [f"active-{u}" for u in range(8)]
            c.record_many([(u, r, 100.0 + j, f"{u}-{j}") for i, u in enumerate(users)
                           for j, r in enumerate(_history(live, 10, user=i))])
            learner.run(until_idle=True, max_seconds=60)
            res = learner.refine()
            assert res is not None and res.accepted, res.reason if res else None
            entry = learner.stats.refines[-1]
            assert entry["outcome"] == "rolled-out", entry
            assert learner.fingerprint != old_fp
            with open_store(store_url) as store:
                st = store.states([_key(u) for u in users] + [_key("old-user")])
            assert {st[_key(u)].fingerprint for u in users} == {learner.fingerprint}
            assert st[_key("old-user")].fingerprint == old_fp
            c.refresh()
            for u in users[:2]:
                assert c.recommend_for_user(u).model_version == entry["version"]
            old = c.recommend_for_user("old-user")
            assert old.model_version == entry["version"] and old.source == "history"
    finally:
        os.environ.pop("FSREC_ADMIN_KEY", None)
        learner.close()
