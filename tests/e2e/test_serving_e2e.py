"""The recommendation path through a real tritonserver, over gRPC and HTTP (issue 5)."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from fsrec_serve.client import AsyncRecommenderClient, RecommenderClient
from fsrec_serve.errors import (
    AuthorizationError,
    ConfigError,
    InferenceServerError,
    InvalidRequestError,
    ModelControlError,
    RequestTimeoutError,
)

PROTOCOLS = ["grpc", "http"]
ADMIN_KEY = "e2e-admin-key-123"  # conftest.ADMIN_KEY (checked in test_server_is_up_and_restricted)
MAX_SEQ_LEN = 20  # conftest.MAX_SEQ_LEN
MAX_TOP_K = 50  # conftest.MAX_TOP_K


def _same_ranking(got_items, got_scores, want_items, want_scores, atol=1e-5):
    """Equal top-k; where the order differs, only between items whose scores tie within atol."""
    assert len(got_items) == len(want_items)
    np.testing.assert_allclose(got_scores, want_scores, atol=atol, rtol=0)
    for g, w, gs, ws in zip(got_items, want_items, got_scores, want_scores):
        if g != w:
            assert abs(gs - ws) <= atol, f"{g} != {w} with different scores {gs} vs {ws}"


@pytest.fixture(params=PROTOCOLS)
def client(request, triton_server):
    with RecommenderClient.for_server(triton_server, request.param, timeout_s=30) as c:
        yield c


def test_server_is_up_and_restricted(triton_server, client, e2e_limits):
    assert (e2e_limits.max_seq_len, e2e_limits.max_top_k, e2e_limits.admin_key) == (MAX_SEQ_LEN, MAX_TOP_K, ADMIN_KEY)
    assert triton_server.is_alive() and triton_server.is_ready()
    assert client.is_live() and client.is_ready()
    assert client.wait_until_ready(timeout_s=5) is client
    assert client.is_ready(version=1) and not client.is_ready(version=99)
    assert client.spec.max_seq_len == MAX_SEQ_LEN and client.spec.max_top_k == MAX_TOP_K
    # model control needs the admin key; inference, health and statistics stay open
    with pytest.raises(AuthorizationError, match="admin key"):
        client.repository_index()
    with RecommenderClient.for_server(triton_server, client.protocol, admin=True) as admin:
        index = admin.repository_index()
    assert {"name": "fsrec", "version": "1", "state": "READY"} in index


def test_topk_equals_in_process_onnxruntime(client, user_histories, ort_topk):
    k = 10
    want = ort_topk(user_histories, k)
    assert any(len(h) > MAX_SEQ_LEN for h in user_histories)  # truncation is exercised too
    for h, (w_items, w_scores) in zip(user_histories, want):
        rec = client.recommend(h, k=k)
        assert rec.model_version == "1" and rec.dropped == ()
        assert len(rec.items) == k and not set(rec.items) & set(h[-MAX_SEQ_LEN:])  # history masked in the graph
        _same_ranking(rec.items, rec.scores, w_items, w_scores)


def test_recommend_batch_is_one_request_and_equals_single_calls(client, user_histories):
    k = 7
    singles = [client.recommend(h, k=k) for h in user_histories]
    before = client.counts()
    batch = client.recommend_batch(user_histories, k=k)
    after = client.counts()
    assert after["inference_count"] - before["inference_count"] == len(user_histories)
    assert after["execution_count"] - before["execution_count"] == 1  # one request, one execution
    for b, s in zip(batch, singles):
        _same_ranking(b.items, b.scores, s.items, s.scores)


def test_recommend_batch_larger_than_max_batch_size(client, user_histories):
    many = (user_histories * 6)[:100]  # > max_batch_size 64: split into two requests
    recs = client.recommend_batch(many, k=3)
    n = len(user_histories)
    assert len(recs) == 100
    assert [r.items for r in recs[:n]] == [r.items for r in recs[n:2 * n]]


def test_concurrent_requests_are_batched_by_triton(client, user_histories):
    """Threads send single-history requests at once: Triton's dynamic batcher groups them and
    the python model stacks each group into one ONNX Runtime call (executions < inferences)."""
    k = 5
    expected = {tuple(h): client.recommend(h, k=k).items for h in user_histories}
    before = client.counts()
    errors, mismatches = [], []
    n_threads, per_thread = 8, 24

    def worker(t):
        try:
            for i in range(per_thread):
                h = user_histories[(t * per_thread + i) % len(user_histories)]
                rec = client.recommend(h, k=k)
                if rec.items != expected[tuple(h)]:
                    mismatches.append((h, rec.items))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:3]  # FP32 graph: a user's answer does not depend on batch-mates
    after = client.counts()
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == n_threads * per_thread
    assert executions < inferences, f"no dynamic batching: {executions} executions for {inferences} requests"
    stats = client.statistics()["model_stats"][0]
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_requests_get_errors_and_server_keeps_answering(protocol, triton_server, e2e_splits):
    """Raw tritonclient requests that bypass the client's checks."""
    if protocol == "grpc":
        import tritonclient.grpc as tc

        raw = tc.InferenceServerClient(triton_server.url_grpc)
    else:
        import tritonclient.http as tc

        raw = tc.InferenceServerClient(triton_server.url_http.removeprefix("http://"))
    from tritonclient.utils import InferenceServerException

    n = len(e2e_splits.item_map)

    def infer(arr, dtype="INT64"):
        inp = tc.InferInput("item_ids", list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        return raw.infer("fsrec", [inp])

    good = np.zeros((1, MAX_SEQ_LEN), np.int64)
    good[0, -3:] = [1, 2, 3]
    bad_requests = {
        "wrong dtype": (good.astype(np.int32), "INT32"),
        "wrong dtype float": (good.astype(np.float32), "FP32"),
        "wrong shape": (np.ones((1, MAX_SEQ_LEN + 3), np.int64), "INT64"),
        "missing batch dim": (np.ones((MAX_SEQ_LEN,), np.int64), "INT64"),
        "id above range": (np.full((1, MAX_SEQ_LEN), n + 5, np.int64), "INT64"),
        "[MASK] id": (np.full((1, MAX_SEQ_LEN), n + 1, np.int64), "INT64"),
        "negative id": (np.full((2, MAX_SEQ_LEN), -3, np.int64), "INT64"),
        "batch too large": (np.ones((65, MAX_SEQ_LEN), np.int64), "INT64"),
    }
    try:
        for name, (arr, dtype) in bad_requests.items():
            with pytest.raises(InferenceServerException) as ei:
                infer(arr, dtype)
            assert ei.value.message(), name
            # the next good request is still answered, correctly
            r = infer(good)
            items = r.as_numpy("top_items")
            assert items.shape == (1, MAX_TOP_K) and not {1, 2, 3} & set(items[0].tolist()), name
        # a batch mixing a good and a bad row fails as a whole, the server keeps serving
        mixed = np.vstack([good, np.full((1, MAX_SEQ_LEN), n + 5, np.int64)])
        with pytest.raises(InferenceServerException):
            infer(mixed)
        assert infer(good).as_numpy("top_items").shape == (1, MAX_TOP_K)
    finally:
        raw.close()
    assert triton_server.is_alive()


def test_client_checks_before_sending(client, user_histories):
    before = client.counts()
    with pytest.raises(InvalidRequestError, match="empty"):
        client.recommend([], k=5)
    with pytest.raises(InvalidRequestError, match="out of range"):
        client.recommend(user_histories[0], k=MAX_TOP_K + 1)
    with pytest.raises(InvalidRequestError, match="out of range"):
        client.recommend(user_histories[0], k=0)
    with pytest.raises(InvalidRequestError, match="none of the history"):
        client.recommend(["no-such-item", "nope"], k=5)
    with pytest.raises(InvalidRequestError):  # one bad history refuses the whole batch
        client.recommend_batch([user_histories[0], []], k=5)
    assert client.counts()["inference_count"] == before["inference_count"]  # nothing was sent
    rec = client.recommend(user_histories[0] + ["no-such-item"], k=5)
    assert rec.dropped == ("no-such-item",)
    assert rec.items == client.recommend(user_histories[0], k=5).items
    strict = RecommenderClient(client.url, client.protocol, repository=client.repository, on_unknown="error")
    with strict, pytest.raises(InvalidRequestError, match="no-such-item"):
        strict.recommend(user_histories[0] + ["no-such-item"], k=5)


def test_server_errors_are_mapped(triton_server, client):
    # the repository knows no version 7 either: the client says so before sending
    with pytest.raises(ConfigError, match="version 7"):
        RecommenderClient(client.url, client.protocol, repository=client.repository, model_version="7")
    with RecommenderClient(client.url, client.protocol, item_map=client.item_map, spec=client.spec, model_version="7") as c:
        with pytest.raises(InferenceServerError, match="version 7"):
            c.recommend(["1"], k=3)
    with RecommenderClient(client.url, client.protocol, model_name="nope", item_map=client.item_map, spec=client.spec) as c:
        with pytest.raises(InferenceServerError, match="nope"):
            c.recommend(["1"], k=3)
    # a 0.1 ms budget: gRPC's deadline always fires; HTTP's per-connection gevent timeout can let
    # an already-buffered answer through on a loaded machine, so it gets a few tries, and any
    # outcome other than an answer or RequestTimeoutError fails the test
    with RecommenderClient(client.url, client.protocol, repository=client.repository, timeout_s=1e-4, retries=3) as c:
        timed_out = 0
        heavy = [[str(i) for i in range(1, MAX_SEQ_LEN + 1)]] * 64  # full-length rows: the answer takes a while
        for _ in range(1 if client.protocol == "grpc" else 30):
            try:
                c.recommend_batch(heavy, k=3)
            except RequestTimeoutError:
                timed_out += 1
                break
        assert timed_out == 1
    with RecommenderClient.for_server(triton_server, client.protocol, admin=True) as admin:
        with pytest.raises(ModelControlError, match="nope"):
            admin.load_model("nope")


def test_statistics_passthrough(client):
    stats = client.statistics()
    (m,) = [s for s in stats["model_stats"] if s["name"] == "fsrec"]
    assert isinstance(m["inference_count"], int) and m["inference_count"] > 0
    assert isinstance(m["inference_stats"]["success"]["count"], int)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client(protocol, triton_server, user_histories):
    with RecommenderClient.for_server(triton_server, protocol) as sync:
        want = [sync.recommend(h, k=6).items for h in user_histories]

    async def main():
        async with AsyncRecommenderClient.for_server(triton_server, protocol, timeout_s=30) as c:
            assert await c.is_ready()
            got = await asyncio.gather(*(c.recommend(h, k=6) for h in user_histories))
            batch = await c.recommend_batch(user_histories, k=6)
            with pytest.raises(InvalidRequestError):
                await c.recommend([], k=6)
            stats = await c.counts()
            return got, batch, stats

    got, batch, stats = asyncio.run(main())
    assert [r.items for r in got] == want
    assert [r.items for r in batch] == want
    assert stats["inference_count"] > 0


def test_cli_recommend(triton_server, user_histories, capsys):
    from fsrec_serve.cli import main

    h = user_histories[3]
    for url in (triton_server.url_grpc, triton_server.url_http):
        rc = main(["recommend", "--url", url, "--repository", str(triton_server.repository), "--k", "4", "--json",
                   "--history", *h])  # fmt: skip
        assert rc == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with RecommenderClient.for_server(triton_server, "grpc") as c:
            assert out["items"] == c.recommend(h, k=4).items
    rc = main(["recommend", "--url", triton_server.url_grpc, "--repository", str(triton_server.repository),
               "--history", *h[:3]])  # fmt: skip
    table = capsys.readouterr().out
    assert rc == 0 and "rank" in table and len(table.strip().splitlines()) == 3 + 10
    rc = main(["recommend", "--url", triton_server.url_grpc, "--repository", str(triton_server.repository),
               "--k", "500", "--history", "1"])  # fmt: skip
    assert rc == 2 and "out of range" in capsys.readouterr().err


def test_admin_key_is_required_for_model_control(triton_server):
    with RecommenderClient.for_server(triton_server, "http") as c:
        with pytest.raises(AuthorizationError):
            c.load_model()
    with RecommenderClient.for_server(triton_server, "grpc", admin_key="wrong-key") as c:
        with pytest.raises(AuthorizationError):
            c.unload_model()
    with RecommenderClient.for_server(triton_server, "grpc", admin=True) as c:
        assert c.admin_key == ADMIN_KEY
        c.load_model()  # reload the same version: allowed with the key, keeps serving
        assert c.is_ready()
        assert c.recommend(["1", "2"], k=3).model_version == "1"


def test_client_sends_real_lengths_and_per_user_parameters(client, user_histories, ort_session, e2e_splits):
    """The client sends each request at its longest history's own length (the cpu target is
    variable-length) and the user's parameters when given; answers equal in-process ORT on the
    padded history; bad user_params are refused before sending (FsRecError)."""
    from exporters import run_topk
    from fsrec_serve.idmap import pad_left

    spec = client.spec
    assert spec.variable_length and not spec.strict_buckets and spec.user_params_dim > 0
    im = e2e_splits.item_map
    h = user_histories[0][:4]
    up = np.linspace(-0.5, 0.5, spec.user_params_dim, dtype=np.float32)
    rec = client.recommend(h, k=5, user_params=up)
    items, scores = run_topk(ort_session, pad_left([im.indices(h)], MAX_SEQ_LEN), user_params=up[None])
    assert rec.items == im.raws(items[0][:5].tolist())
    np.testing.assert_allclose(rec.scores, scores[0][:5], atol=1e-5)
    assert client.recommend(h, k=5, user_params=np.zeros_like(up)).items == client.recommend(h, k=5).items
    before = client.counts()
    with pytest.raises(InvalidRequestError, match="NaN"):
        client.recommend(h, k=5, user_params=np.full_like(up, np.nan))
    with pytest.raises(InvalidRequestError, match="shape"):
        client.recommend_batch([h, h], k=5, user_params=up[None])
    assert client.counts()["inference_count"] == before["inference_count"]  # nothing was sent
