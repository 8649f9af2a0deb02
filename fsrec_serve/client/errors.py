"""Map what tritonclient (and the sockets under it) raise into fsrec's error hierarchy.

- refused by a restricted endpoint (HTTP 403 / gRPC "This protocol is restricted") -> AuthorizationError
- no answer within the client's timeout -> RequestTimeoutError (a ServerUnavailableError, not retried)
- connection refused/reset, gRPC UNAVAILABLE, HTTP 502/503/504/429, queue full -> ServerUnavailableError
  (retried with backoff)
- anything else Triton answers with an error (bad input, unknown model/version, ...) -> InferenceServerError
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from ..errors import (
    AuthorizationError,
    ClientError,
    FsRecError,
    InferenceServerError,
    RequestTimeoutError,
    ServerUnavailableError,
)

UNAVAILABLE_STATUSES = {
    "StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.ABORTED",
    "502", "503", "504", "429",
}  # fmt: skip
TIMEOUT_STATUSES = {"StatusCode.DEADLINE_EXCEEDED", "408"}
AUTH_STATUSES = {"403", "401", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED"}
NOT_FOUND_STATUSES = {"404", "StatusCode.NOT_FOUND"}
_UNAVAILABLE_TEXT = (
    "failed to connect", "connection refused", "connection reset", "socket closed", "broken pipe",
    "exceeds maximum queue size", "server is not ready", "not ready", "connect failed",
    "unavailable", "goaway", "server disconnected",
)  # fmt: skip
_TIMEOUT_TEXT = ("deadline exceeded", "timed out", "timeout")


@dataclass(frozen=True)
class CallContext:
    url: str  # address of the server
    protocol: str  # "grpc" or "http"
    action: str  # what was attempted ("inference on fsrec", "load_model fsrec", ...)


def _status_message(exc: BaseException) -> tuple[str, str]:
    status = getattr(exc, "status", None)
    message = getattr(exc, "message", None)
    s = status() if callable(status) else status
    m = message() if callable(message) else message
    return ("" if s is None else str(s)), (str(m) if m else str(exc))


def _is_triton_exception(exc: BaseException) -> bool:
    return type(exc).__name__ == "InferenceServerException" and type(exc).__module__.startswith("tritonclient")


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return True
    mod, name = type(exc).__module__, type(exc).__name__
    return (mod.startswith("gevent") and name == "Timeout") or (mod.startswith("aiohttp") and "Timeout" in name)


def _is_connection(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, socket.gaierror, EOFError)):
        return True
    mod = type(exc).__module__
    if mod.startswith("aiohttp"):
        try:
            import aiohttp

            return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))
        except ImportError:  # pragma: no cover
            return False
    if mod.startswith(("geventhttpclient", "gevent", "http.client")):
        return True
    return isinstance(exc, OSError)


def map_exception(exc: BaseException, ctx: CallContext) -> ClientError | None:
    """The fsrec error for ``exc``, or None if ``exc`` is not a transport/server error (a
    programming error then propagates unchanged)."""
    if isinstance(exc, FsRecError):
        return exc if isinstance(exc, ClientError) else None
    where = f"{ctx.action} on {ctx.url} ({ctx.protocol})"
    if _is_triton_exception(exc):
        status, msg = _status_message(exc)
        low = msg.lower()
        if status in AUTH_STATUSES or ("restricted" in low and "header" in low):
            return AuthorizationError(
                f"{where} was refused: {msg}. This endpoint needs the admin key: pass admin_key=... to the "
                "client (`--admin-key` / env FSREC_ADMIN_KEY on the CLI), the one the server was started with"
            )
        if status in TIMEOUT_STATUSES or (not status and any(t in low for t in _TIMEOUT_TEXT)):
            return RequestTimeoutError(
                f"{where}: no answer within the client's timeout ({msg}); raise timeout_s, or check the server's load"
            )
        # message text only decides when there is no status (tritonclient's own raise_error)
        if status in UNAVAILABLE_STATUSES or (not status and any(t in low for t in _UNAVAILABLE_TEXT)):
            return ServerUnavailableError(
                f"{where}: the server is unavailable or overloaded ([{status}] {msg}); is tritonserver running "
                "(`fsrec serve`) on that address and port?"
            )
        if status in NOT_FOUND_STATUSES:
            return InferenceServerError(
                f"{where}: {msg}. Check model_name / model_version against what the server has loaded "
                "(client.repository_index() or `fsrec serve` logs)"
            )
        return InferenceServerError(f"{where} failed: [{status or 'error'}] {msg}")
    if _is_timeout(exc):
        return RequestTimeoutError(
            f"{where}: no answer within the client's timeout ({type(exc).__name__}: {exc}); raise timeout_s, "
            "or check the server's load"
        )
    if _is_connection(exc):
        return ServerUnavailableError(
            f"{where}: cannot reach the server ({type(exc).__name__}: {exc}); is tritonserver running "
            "(`fsrec serve`) on that address and port?"
        )
    return None


OVERLOAD_STATUSES = {"StatusCode.RESOURCE_EXHAUSTED", "429"}
_OVERLOAD_TEXT = ("exceeds maximum queue size",)


def connection_suspect(exc: BaseException) -> bool:
    """After a retryable failure: may the connection itself be broken (refused, reset, gRPC
    UNAVAILABLE, a proxy's 502/503/504)? False when the server answered over a healthy
    connection that it is overloaded (queue full, RESOURCE_EXHAUSTED, 429): a new connection
    would not help there, and closing it would cut the calls that share it."""
    if _is_triton_exception(exc):
        status, msg = _status_message(exc)
        return status not in OVERLOAD_STATUSES and not any(t in msg.lower() for t in _OVERLOAD_TEXT)
    return True


def is_retryable(err: BaseException) -> bool:
    """Retry only when the server is unavailable or overloaded (never on timeouts: the request
    may still be running, and never on bad requests or refusals)."""
    return isinstance(err, ServerUnavailableError) and not isinstance(err, RequestTimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # extra attempts after the first one (0 = no retry)
    backoff_s: float = 0.1  # first delay; doubles each attempt
    backoff_max_s: float = 2.0  # cap of one delay

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (0-based): exponential, capped, jittered in [50%, 100%]."""
        base = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        r = (rng or random).random()
        return base * (0.5 + 0.5 * r)

    def give_up_message(self, err: BaseException) -> str:
        return f"{err} (gave up after {self.retries + 1} attempt(s))"
