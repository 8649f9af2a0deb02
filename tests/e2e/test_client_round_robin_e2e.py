"""Several servers behind one gRPC target, balanced per request by the client's channel.

Two real tritonservers on 127.0.0.1 (``server_factory``, each its own free ports) serve the same
cpu repository. A ``dns:///host:port`` name resolves to one port only, so the two servers are
named by gRPC's static address-list resolver, ``ipv4:127.0.0.1:P1,127.0.0.1:P2`` (the client
takes ``dns:///``, ``ipv4:`` and ``ipv6:`` targets and asks for ``round_robin``). Each server's
own inference statistics must show that requests reached both of them, and every answer must be
the model's (in-process ONNX Runtime on the same graph).
"""

from __future__ import annotations

import asyncio

import pytest

from fsrec_serve.client import AsyncRecommenderClient, RecommenderClient

pytestmark = pytest.mark.e2e
REQUESTS = 24


def _inferences(server) -> int:
    with RecommenderClient(server.url_grpc, "grpc") as c:
        return c.counts()["inference_count"]


def test_one_target_spreads_requests_over_two_servers(fsrec_repository, server_factory, user_histories, ort_topk):
    servers = [server_factory(fsrec_repository), server_factory(fsrec_repository)]  # started one after the other
    target = "ipv4:" + ",".join(s.url_grpc for s in servers)
    before = [_inferences(s) for s in servers]
    histories = [user_histories[i % len(user_histories)] for i in range(REQUESTS)]

    with RecommenderClient(target, "grpc", repository=fsrec_repository, timeout_s=30) as c:
        assert c.url == target and dict(c._channel_args())["grpc.lb_policy_name"] == "round_robin"
        c.wait_until_ready(timeout_s=60)
        got = [c.recommend(h, k=5) for h in histories]  # one request each
    want = ort_topk(histories, 5)
    assert [r.items for r in got] == [w[0] for w in want]

    sync_share = [_inferences(s) - b for s, b in zip(servers, before)]
    assert sum(sync_share) == REQUESTS, sync_share
    assert min(sync_share) >= REQUESTS // 4, f"round robin should reach both servers: {sync_share}"

    async def run_async():
        async with AsyncRecommenderClient(target, "grpc", repository=fsrec_repository, timeout_s=30) as ac:
            return [await ac.recommend(h, k=5) for h in histories]

    got_async = asyncio.run(run_async())
    assert [r.items for r in got_async] == [w[0] for w in want]
    async_share = [_inferences(s) - b - n for s, b, n in zip(servers, before, sync_share)]
    assert sum(async_share) == REQUESTS and min(async_share) >= REQUESTS // 4, async_share


def test_dns_target_reaches_a_server(fsrec_repository, server_factory, user_histories):
    server = server_factory(fsrec_repository)
    port = server.url_grpc.rsplit(":", 1)[1]
    before = _inferences(server)
    with RecommenderClient(f"dns:///localhost:{port}", "grpc", repository=fsrec_repository, timeout_s=30) as c:
        assert c.url == f"dns:///localhost:{port}"
        c.wait_until_ready(timeout_s=60)
        assert len(c.recommend(user_histories[0], k=3).items) == 3
    assert _inferences(server) - before == 1
