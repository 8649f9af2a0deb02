"""Client options, error mapping and retries, without a server (a closed port is real enough)."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from tritonclient.utils import InferenceServerException

from fsrec_serve.client import AsyncRecommenderClient, ModelSpec, RecommenderClient, RetryPolicy, parse_url
from fsrec_serve.client.errors import CallContext, is_retryable, map_exception
from fsrec_serve.data import IdMap
from fsrec_serve.errors import (
    AuthorizationError,
    ConfigError,
    InferenceServerError,
    InvalidRequestError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from fsrec_serve.contract import GRPC_RESTRICTED_KEY_HEADER, RESTRICTED_KEY_HEADER

CTX = CallContext("127.0.0.1:1", "grpc", "inference on 'fsrec'")
SPEC = ModelSpec(max_seq_len=5, max_top_k=10, num_items=3, max_batch_size=4)
IM = IdMap(["x", "y", "z"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# -- urls ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, protocol, want",
    [
        ("localhost:9001", None, ("localhost:9001", "grpc", False)),
        ("http://h:9", None, ("h:9", "http", False)),
        ("https://h:9/", "http", ("h:9", "http", True)),
        ("grpcs://h", None, ("h:8001", "grpc", True)),
        ("h", "http", ("h:8000", "http", False)),
        (None, "grpc", ("127.0.0.1:8001", "grpc", False)),
        ("[::1]:7", "http", ("[::1]:7", "http", False)),
    ],
)
def test_parse_url(url, protocol, want, monkeypatch):
    for var in ("FSREC_HOST", "FSREC_HTTP_PORT", "FSREC_GRPC_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert parse_url(url, protocol) == want


@pytest.mark.parametrize("url, protocol", [("http://h:1", "grpc"), ("ftp://h:1", None), ("h:1", "tcp"), ("h:x", None)])
def test_bad_urls(url, protocol):
    with pytest.raises(ConfigError):
        parse_url(url, protocol)


def test_bad_options():
    with pytest.raises(ConfigError, match="on_unknown"):
        RecommenderClient("h:1", on_unknown="ignore")
    with pytest.raises(ConfigError, match="timeout_s"):
        RecommenderClient("h:1", timeout_s=0)
    with pytest.raises(ConfigError, match="retries"):
        RecommenderClient("h:1", retries=-1)


# -- error mapping ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, msg, cls",
    [
        ("403", "This API is restricted, expecting header 'fsrec-admin-key'", AuthorizationError),
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-k'", AuthorizationError),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
        ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size", ServerUnavailableError),
        ("503", "Server not ready", ServerUnavailableError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
        ("404", "Request for unknown model: 'fsrec' version 7 is not found", InferenceServerError),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'item_ids'", InferenceServerError),
        ("400", "load failed for model 'fsrec': version 2 is at UNAVAILABLE state", InferenceServerError),
        (None, "failed to obtain inference response", InferenceServerError),
        (None, "connection refused", ServerUnavailableError),
    ],
)
def test_triton_errors_are_mapped(status, msg, cls):
    err = map_exception(InferenceServerException(msg, status=status), CTX)
    assert type(err) is cls
    assert msg in str(err) and "127.0.0.1:1" in str(err)


def test_transport_errors_are_mapped():
    assert type(map_exception(ConnectionRefusedError(111, "refused"), CTX)) is ServerUnavailableError
    assert type(map_exception(ConnectionResetError(), CTX)) is ServerUnavailableError
    assert type(map_exception(socket.timeout("timed out"), CTX)) is RequestTimeoutError
    assert type(map_exception(TimeoutError(), CTX)) is RequestTimeoutError
    assert map_exception(TypeError("a bug"), CTX) is None  # programming errors are not disguised
    e = InvalidRequestError("x")
    assert map_exception(e, CTX) is e


def test_only_unavailable_is_retried():
    assert is_retryable(ServerUnavailableError("x"))
    for e in (RequestTimeoutError("x"), InferenceServerError("x"), AuthorizationError("x"), InvalidRequestError("x")):
        assert not is_retryable(e)


def test_backoff_is_exponential_capped_and_jittered():
    p = RetryPolicy(retries=5, backoff_s=0.1, backoff_max_s=0.5)
    rng = random.Random(0)
    for attempt, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (9, 0.5)]:
        for _ in range(20):
            assert base * 0.5 <= p.delay(attempt, rng) <= base


# -- against a closed port ----------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_gives_unavailable_after_retries(protocol):
    c = RecommenderClient(f"127.0.0.1:{closed_port()}", protocol, item_map=IM, spec=SPEC, retries=2,
                          backoff_s=0.05, backoff_max_s=0.05, timeout_s=5)  # fmt: skip
    with c:
        assert not c.is_live() and not c.is_ready()
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="gave up after 3 attempt") as ei:
            c.recommend(["x"], k=2)
        assert 0.05 <= time.monotonic() - t0 < 5  # two backoffs, no hang
        assert "fsrec serve" in str(ei.value)
        with pytest.raises(ServerUnavailableError, match="not ready within"):
            c.wait_until_ready(timeout_s=0.3, poll_s=0.1)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_checks_run_before_anything_is_sent(protocol):
    """A bad request fails with InvalidRequestError even when no server exists."""
    with RecommenderClient(f"127.0.0.1:{closed_port()}", protocol, item_map=IM, spec=SPEC, retries=0) as c:
        with pytest.raises(InvalidRequestError, match="empty"):
            c.recommend([], k=2)
        with pytest.raises(InvalidRequestError, match=r"1\.\.10"):
            c.recommend(["x"], k=11)
        with pytest.raises(InvalidRequestError):
            c.recommend_batch([["x"], ["nope"]], k=2)
        with pytest.raises(InvalidRequestError, match="histories must be"):
            c.recommend_batch("xy", k=2)
        assert c.recommend_batch([], k=2) == []


def test_admin_key_goes_only_to_model_control_calls_with_the_protocols_header(monkeypatch, tmp_path):
    monkeypatch.delenv("FSREC_ADMIN_KEY", raising=False)
    monkeypatch.setenv("FSREC_STATE_DIR", str(tmp_path))  # no key file there
    g = RecommenderClient("h:1", "grpc", admin_key="k", headers={"authorization": "Bearer t"})
    h = RecommenderClient("h:1", "http", admin_key="k")
    assert g._request_headers() == {"authorization": "Bearer t"}
    assert g._request_headers(admin=True) == {"authorization": "Bearer t", GRPC_RESTRICTED_KEY_HEADER: "k"}
    assert h._request_headers(admin=True) == {RESTRICTED_KEY_HEADER: "k"}
    assert RecommenderClient("h:1", "http")._request_headers(admin=True) is None
    monkeypatch.setenv("FSREC_ADMIN_KEY", "from-env")
    assert RecommenderClient("h:1", "http").admin_key == "from-env"


def test_client_finds_the_key_file_fsrec_serve_generated(monkeypatch, tmp_path):
    """Same machine: no key given, no env -> the key file under the state dir is used."""
    monkeypatch.delenv("FSREC_ADMIN_KEY", raising=False)
    monkeypatch.delenv("FSREC_ADMIN_KEY_FILE", raising=False)
    monkeypatch.setenv("FSREC_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    key_file = tmp_path / "state" / "admin.key"
    key_file.write_text("generated-key\n")
    key_file.chmod(0o600)
    c = RecommenderClient("h:1", "http")
    assert c._request_headers(admin=True) == {RESTRICTED_KEY_HEADER: "generated-key"}
    assert c._request_headers() is None  # never on inference calls
    monkeypatch.setenv("FSREC_ADMIN_KEY", "from-env")  # env, then an explicit key, win over the file
    assert c.admin_key == "from-env" and RecommenderClient("h:1", "http", admin_key="mine").admin_key == "mine"
    monkeypatch.delenv("FSREC_ADMIN_KEY")
    other = tmp_path / "elsewhere.key"
    other.write_text("other-key")
    other.chmod(0o600)
    monkeypatch.setenv("FSREC_ADMIN_KEY_FILE", str(other))
    assert c.admin_key == "other-key"
    other.chmod(0o644)  # readable by others: refused, with the fix
    with pytest.raises(ConfigError, match="chmod 600"):
        c._request_headers(admin=True)


def test_closed_client_refuses_requests():
    c = RecommenderClient("127.0.0.1:1", "grpc", item_map=IM, spec=SPEC)
    c.close()
    c.close()
    with pytest.raises(ConfigError, match="closed"):
        c.recommend(["x"], k=1)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_same_checks_and_mapping(protocol):
    async def main():
        async with AsyncRecommenderClient(f"127.0.0.1:{closed_port()}", protocol, item_map=IM, spec=SPEC,
                                          retries=1, backoff_s=0.01, timeout_s=5) as c:  # fmt: skip
            with pytest.raises(InvalidRequestError, match="empty"):
                await c.recommend([], k=2)
            with pytest.raises(InvalidRequestError, match="out of range"):
                await c.recommend(["x"], k=0)
            assert not await c.is_ready()
            with pytest.raises(ServerUnavailableError, match="gave up after 2 attempt"):
                await c.recommend(["x", "y"], k=2)

    asyncio.run(main())


# -- gRPC name-resolver targets (several servers behind one name, round-robin) -----------------------
@pytest.mark.parametrize("url, want", [
    ("dns:///triton.svc:9001", "dns:///triton.svc:9001"),
    ("dns:///triton-headless", "dns:///triton-headless:8001"),  # Triton's port, not gRPC's 443
    ("dns://10.0.0.2:53/triton:7", "dns://10.0.0.2:53/triton:7"),  # with a DNS server authority
    ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ("ipv4:10.0.0.1, 10.0.0.2:9", "ipv4:10.0.0.1:8001,10.0.0.2:9"),
    ("ipv6:[::1]:5,::2", "ipv6:[::1]:5,[::2]:8001"),
])
def test_resolver_targets_are_grpc_with_explicit_ports(url, want, monkeypatch):
    monkeypatch.delenv("FSREC_GRPC_PORT", raising=False)
    assert parse_url(url, None) == (want, "grpc", False) == parse_url(url, "grpc")
    c = RecommenderClient(url)
    args = dict(c._channel_args())
    assert args["grpc.lb_policy_name"] == "round_robin"
    assert args["grpc.max_receive_message_length"] == 2**31 - 1  # tritonclient's defaults are kept
    assert RecommenderClient("127.0.0.1:1")._channel_args() is None  # one address: tritonclient's own


@pytest.mark.parametrize("url, protocol, match", [
    ("dns:///h:1", "http", "gRPC name-resolver target.*protocol='grpc'"),
    ("dns:///", None, "dns:///host:port"),
    ("dns:///a:1,b:2", None, "ipv4:a:port,b:port"),
    ("ipv4:1.2.3.4:1,,", None, "no empty entries"),
    ("ipv4:1.2.3.4:x", None, "ipv4:1.2.3.4:x"),
])
def test_bad_resolver_targets_say_why(url, protocol, match):
    with pytest.raises(ConfigError, match=match):
        parse_url(url, protocol)


# -- infer_indices checks what it can before sending ----------------------------------------------
def test_infer_indices_checks_dtype_range_and_width_against_the_spec():
    import numpy as np

    with RecommenderClient(f"127.0.0.1:{closed_port()}", "grpc", spec=SPEC, retries=0, timeout_s=5) as c:
        for bad, match in [(np.zeros((2, 5), np.float32), "integer array"), (np.zeros(5, np.int64), r"integer array \[B, L\]"),
                           (np.zeros((2, 5), bool), "integer array"), (np.zeros((0, 5), np.int64), "integer array"),
                           (np.array([[0, 0, 1, 2, 4]]), r"outside 0\.\.3 \(e\.g\. \[4\]\).*item_map"),
                           (np.array([[0, 0, 0, -1, 2]]), r"outside 0\.\.3.*model indices"),
                           (np.zeros((1, 6), np.int64), "6 wide.*widths 5"), (np.zeros((1, 4), np.int64), "4 wide.*widths 5")]:
            with pytest.raises(InvalidRequestError, match=match):
                c.infer_indices(bad)
        with pytest.raises(ServerUnavailableError):  # a valid request gets as far as the (closed) port
            c.infer_indices(np.array([[0, 0, 1, 2, 3]], np.int32))
    no_spec = RecommenderClient("127.0.0.1:1", "grpc")  # spec unknown: dtype, shape and >= 0 only
    with pytest.raises(InvalidRequestError, match=r"outside 0\.\.num_items"):
        no_spec._check_indices(np.array([[-3, 1]]))
    ids, up = no_spec._check_indices(np.array([[7, 900]], np.int32))
    assert ids.dtype == np.int64 and up is None


def test_infer_indices_pads_to_the_bucket_and_sends_required_user_params():
    import numpy as np

    gpu = ModelSpec(max_seq_len=8, max_top_k=4, num_items=9, variable_length=True, length_buckets=(2, 4, 8),
                    strict_buckets=True, user_params_dim=3, user_params_required=True)
    c = RecommenderClient("127.0.0.1:1", "grpc", spec=gpu)
    ids, up = c._check_indices(np.array([[0, 5, 6], [7, 8, 9]]))
    assert ids.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9]] and up.shape == (2, 3) and not up.any()
    ids, up = c._check_indices(np.array([[1, 2]]), user_params=[[0.5, 0.0, 1.0]])
    assert ids.shape == (1, 2) and up.dtype == np.float32 and up.tolist() == [[0.5, 0.0, 1.0]]
    with pytest.raises(InvalidRequestError, match=r"user_params has shape \[1, 2\]"):
        c._check_indices(np.array([[1, 2]]), user_params=[[0.5, 0.0]])
    ragged = ModelSpec(max_seq_len=8, max_top_k=4, num_items=9, variable_length=True, user_params_dim=3)
    ids, up = RecommenderClient("127.0.0.1:1", "grpc", spec=ragged)._check_indices(np.array([[1, 2, 3]]))
    assert ids.shape == (1, 3) and up is None  # optional input: nothing sent


# -- the async client opens a new connection after a transport error ---------------------------------
class _CountingAsyncClient(AsyncRecommenderClient):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.made: list = []

    def _new_client(self):
        c = super()._new_client()
        self.made.append(c)
        return c


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_retry_replaces_the_connection_each_attempt(protocol):
    async def main():
        async with _CountingAsyncClient(f"127.0.0.1:{closed_port()}", protocol, spec=SPEC, retries=2,
                                        backoff_s=0.01, backoff_max_s=0.01, timeout_s=5) as c:
            with pytest.raises(ServerUnavailableError, match="gave up after 3 attempt"):
                await c.server_metadata()
            assert len(c.made) == 3 and len({id(x) for x in c.made}) == 3  # a new one per attempt
            assert c._aclient is c.made[-1]  # the last one is kept (no retry followed), closed with the client
            with pytest.raises(ServerUnavailableError):  # the next call starts on the kept one
                await c.server_metadata()
            assert len(c.made) == 5 and len({id(x) for x in c.made}) == 5

    asyncio.run(main())


def test_only_a_suspect_connection_is_replaced():
    from fsrec_serve.client.errors import connection_suspect

    assert connection_suspect(InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"))
    assert connection_suspect(ConnectionResetError()) and connection_suspect(InferenceServerException("x", status="502"))
    for overloaded in (InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"),
                       InferenceServerException("busy", status="StatusCode.RESOURCE_EXHAUSTED"),
                       InferenceServerException("slow down", status="429")):
        assert not connection_suspect(overloaded)  # the server answered: the connection is fine
