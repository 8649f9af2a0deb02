"""Configuration and the transport-free half of the clients (shared by sync and asyncio)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..contract import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MODEL_NAME,
    GRPC_RESTRICTED_KEY_HEADER,
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ITEM_IDS_DTYPE,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    RESTRICTED_KEY_HEADER,
    SCORE_DTYPE,
    TRITON_ITEM_IDS_DTYPE,
    TRITON_SCORE_DTYPE,
)
from ..errors import ClientError, ConfigError, InferenceServerError, InvalidRequestError, ModelControlError
from ..settings import find_admin_key
from .errors import CallContext, RetryPolicy, map_exception
from ..idmap import IdMap, pad_left
from .validation import (
    EncodedHistory,
    ModelSpec,
    Recommendation,
    chunks,
    coerce_item_map,
    decode_top,
    encode_history,
    load_repository_info,
    encode_user_params,
    pad_batch,
    validate_k,
    validate_on_unknown,
)

PROTOCOLS = ("grpc", "http")
# gRPC name-resolver targets (https://github.com/grpc/grpc/blob/master/doc/naming.md): several
# addresses behind one target, balanced per request by the channel (round_robin)
RESOLVER_SCHEMES = ("dns", "ipv4", "ipv6")
LB_POLICY = ("grpc.lb_policy_name", "round_robin")


def _default_port(protocol: str) -> int:
    default = DEFAULT_GRPC_PORT if protocol == "grpc" else DEFAULT_HTTP_PORT
    return int(os.environ.get("FSREC_GRPC_PORT" if protocol == "grpc" else "FSREC_HTTP_PORT", default))


def _with_port(address: str, url: str, ipv6: bool = False) -> str:
    """``host[:port]`` (``[v6]:port`` or a bare v6 address when ``ipv6``) with gRPC's default port added."""
    if ipv6 and not address.startswith("["):
        address = f"[{address}]"
    try:
        port = urlsplit("//" + address).port
    except ValueError as e:
        raise ConfigError(f"url {url!r}: {address!r}: {e}") from None
    return address if port is not None else f"{address}:{_default_port('grpc')}"


def is_resolver_target(url: str | None) -> bool:
    """True for a gRPC name-resolver target: ``dns:///host:port``, ``ipv4:a:p,b:q``, ``ipv6:...``."""
    scheme, sep, _ = (url or "").strip().partition(":")
    return bool(sep) and scheme.lower() in RESOLVER_SCHEMES


def _parse_resolver_target(url: str, protocol: str | None) -> tuple[str, str, bool]:
    """``dns:[//authority/]host[:port]``, ``ipv4:addr[:port][,addr[:port]...]`` or the same with
    ``ipv6:`` -> the target with every port explicit (gRPC's default, 443, is not Triton's)."""
    if protocol not in (None, "grpc"):
        raise ConfigError(
            f"url {url!r} is a gRPC name-resolver target (several servers behind one name, balanced by "
            f"the gRPC channel) but protocol={protocol!r}: use protocol='grpc', or an http://host:port url"
        )
    scheme, _, rest = url.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "dns":
        authority, hostport = "", rest
        if rest.startswith("//"):
            authority, _, hostport = rest[2:].partition("/")
        hostport = hostport.rstrip("/")
        if not hostport or "," in hostport:
            raise ConfigError(f"url {url!r}: write one name as dns:///host:port (it may resolve to many addresses); "
                              "list several addresses as ipv4:a:port,b:port")
        return f"dns://{authority}/{_with_port(hostport, url)}", "grpc", False
    addresses = [a.strip() for a in rest.split(",")]
    if not all(addresses):
        raise ConfigError(f"url {url!r}: list addresses as {scheme}:addr:port,addr:port (no empty entries)")
    return f"{scheme}:" + ",".join(_with_port(a, url, scheme == "ipv6") for a in addresses), "grpc", False


def parse_url(url: str | None, protocol: str | None) -> tuple[str, str, bool]:
    """``url`` (``host:port``, ``http(s)://host:port``, ``grpc(s)://host:port``, or a gRPC
    name-resolver target ``dns:///host:port`` / ``ipv4:a:port,b:port`` / ``ipv6:...`` that the
    channel balances round-robin) and an optional protocol -> (address as tritonclient wants it,
    protocol, tls). A missing port gets the protocol's default (8000 HTTP, 8001 gRPC; env
    FSREC_HTTP_PORT / FSREC_GRPC_PORT)."""
    if is_resolver_target(url):
        return _parse_resolver_target(str(url), protocol)
    tls = False
    scheme = None
    rest = (url or "").strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https", "grpc", "grpcs"):
            raise ConfigError(f"url scheme {scheme!r} in {url!r}: use http://, https://, grpc://, host:port, "
                              "or a gRPC target dns:///host:port / ipv4:a:port,b:port")
        tls = scheme in ("https", "grpcs")
        implied = "http" if scheme.startswith("http") else "grpc"
        if protocol is not None and protocol != implied:
            raise ConfigError(f"url {url!r} is a {implied} address but protocol={protocol!r}; make them agree")
        protocol = implied
    protocol = protocol or "grpc"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: choose 'grpc' or 'http'")
    rest = rest.rstrip("/") or os.environ.get("FSREC_HOST", DEFAULT_HOST)
    try:
        port = urlsplit("//" + rest).port
    except ValueError as e:
        raise ConfigError(f"url {url!r}: {e}") from None
    if port is None:
        host, _, path = rest.partition("/")
        rest = f"{host}:{_default_port(protocol)}" + (f"/{path}" if path else "")
    return rest, protocol, tls


def grpc_channel_args(url: str) -> list[tuple[str, object]] | None:
    """gRPC channel options for ``url``: None (tritonclient's defaults) for one address; for a
    resolver target, tritonclient's defaults (message sizes, keepalive) + round_robin, so each
    request goes to the next resolved address instead of all to the first (pick_first)."""
    if not is_resolver_target(url):
        return None
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        LB_POLICY,
    ]


class ClientBase:
    """Everything but the I/O: options, model spec and id map, checks, decoding, error mapping."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str | None = None,
        *,
        model_name: str | None = None,
        model_version: str | int = "",
        item_map: IdMap | str | Path | None = None,
        repository: str | Path | None = None,
        spec: ModelSpec | None = None,
        on_unknown: str = "drop",
        timeout_s: float = 10.0,
        control_timeout_s: float = 120.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        insecure: bool = False,
        headers: Mapping[str, str] | None = None,
        admin_key: str | None = None,
        verbose: bool = False,
    ):
        self.url, self.protocol, tls = parse_url(url, protocol)  # address, "grpc" | "http"
        self.ssl = bool(ssl or tls)  # TLS (grpc ssl channel / https)
        self.root_certificates = str(root_certificates) if root_certificates else None  # CA bundle (PEM file)
        self.private_key = str(private_key) if private_key else None  # client key for mutual TLS (PEM file)
        self.certificate_chain = str(certificate_chain) if certificate_chain else None  # client cert (PEM file)
        self.insecure = bool(insecure)  # https: skip host name verification
        self.model_name = model_name or os.environ.get("FSREC_MODEL_NAME", DEFAULT_MODEL_NAME)  # Triton model
        self.model_version = str(model_version or "")  # "" = the server's choice (latest loaded)
        self.on_unknown = validate_on_unknown(on_unknown)  # "drop" (warn) | "error"
        if timeout_s is None or timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)  # per attempt, inference and health calls
        self.control_timeout_s = float(control_timeout_s)  # per attempt, load/unload (model loading is slow)
        if retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ConfigError("retries, backoff_s and backoff_max_s must be >= 0")
        self.retry = RetryPolicy(int(retries), float(backoff_s), float(backoff_max_s))  # retry on unavailable only
        self.headers = dict(headers or {})  # sent with every request (a gateway's auth header, ...)
        # restricted APIs: explicit, else $FSREC_ADMIN_KEY, else the key file `fsrec serve` wrote on this machine
        # (read when a model-control call needs it)
        self._admin_key = admin_key
        self.verbose = verbose  # tritonclient's verbose output
        self.repository = Path(repository).expanduser() if repository is not None else None  # read side files from
        self._explicit_map = coerce_item_map(item_map)
        self._explicit_spec = spec
        self._lock = threading.Lock()
        self.item_map: IdMap | None = self._explicit_map  # raw id <-> index (None = ids are indices)
        self.spec: ModelSpec | None = spec  # model limits (None until known)
        self.repository_version = ""  # version folder the side files were read from
        if self.repository is not None:
            self._load_repository()

    @classmethod
    def for_server(cls, server: Any, protocol: str = "grpc", *, admin: bool = False, **kwargs: Any):
        """A client of a server started with ``fsrec_serve.serving.serve`` (any object with
        ``url_grpc``, ``url_http``, ``repository`` and ``restricted_api_key``): id map and limits
        are read from its repository; ``admin=True`` sends its admin key with model-control calls."""
        url = server.url_grpc if protocol == "grpc" else server.url_http
        kwargs.setdefault("repository", server.repository)
        if admin and server.restricted_api_key:
            kwargs.setdefault("admin_key", server.restricted_api_key)
        return cls(url, protocol=protocol, **kwargs)

    # -- model info ---------------------------------------------------------------------------
    def _load_repository(self) -> None:
        item_map, spec, version = load_repository_info(self.repository, self.model_name, self.model_version)
        self.item_map = self._explicit_map if self._explicit_map is not None else item_map
        self.spec = self._explicit_spec or spec
        self.repository_version = version

    def refresh(self) -> None:
        """Re-read the repository's side files (after a new version was rolled out)."""
        if self.repository is not None:
            self._load_repository()
        elif self._explicit_spec is None:
            self.spec = None

    def _ctx(self, action: str) -> CallContext:
        return CallContext(self.url, self.protocol, action)

    def _map(self, exc: BaseException, action: str) -> ClientError | None:
        return map_exception(exc, self._ctx(action))

    # -- headers ----------------------------------------------------------------------------
    @property
    def admin_key(self) -> str | None:
        """Key for the restricted (model-control) endpoints: the one given, else $FSREC_ADMIN_KEY,
        else the key file ``fsrec serve`` generated on this machine (settings.admin_key_path())."""
        return find_admin_key(self._admin_key)

    @admin_key.setter
    def admin_key(self, value: str | None) -> None:
        self._admin_key = value

    def _request_headers(self, admin: bool = False) -> dict[str, str] | None:
        h = dict(self.headers)
        key = self.admin_key if admin else None
        if key:
            h[GRPC_RESTRICTED_KEY_HEADER if self.protocol == "grpc" else RESTRICTED_KEY_HEADER] = key
        return h or None

    # -- requests -----------------------------------------------------------------------------
    def _encode(self, histories: Sequence, k: Any, user_params: Any = None
                ) -> tuple[int, list[EncodedHistory], np.ndarray, np.ndarray | None]:
        spec = self.spec
        assert spec is not None
        k = validate_k(k, spec.max_top_k)
        encoded = [
            encode_history(h, item_map=self.item_map, max_seq_len=spec.max_seq_len, num_items=spec.num_items,
                           on_unknown=self.on_unknown)
            for h in histories
        ]  # fmt: skip
        # width: each history's own length / the next strict bucket / a fixed-width model's max_seq_len
        return k, encoded, pad_batch(encoded, spec), encode_user_params(user_params, len(encoded), spec)

    def _batches(self, n: int) -> list[slice]:
        assert self.spec is not None
        return chunks(n, self.spec.max_batch_size)

    def _decode(
        self, top_items: np.ndarray, top_scores: np.ndarray, version: str, encoded: Sequence[EncodedHistory], k: int
    ) -> list[Recommendation]:
        if len(top_items) != len(encoded):
            raise InferenceServerError(
                f"the server answered {len(top_items)} rows for {len(encoded)} histories; is {self.model_name} an fsrec model?"
            )
        num_items = self.spec.num_items if self.spec else None
        rows = decode_top(top_items, top_scores, k, item_map=self.item_map, num_items=num_items)
        return [Recommendation(items, scores, version, e.dropped) for (items, scores), e in zip(rows, encoded)]

    @staticmethod
    def _version_of(result: Any) -> str:
        resp = result.get_response()
        if isinstance(resp, dict):
            return str(resp.get("model_version", ""))
        return str(getattr(resp, "model_version", ""))

    @staticmethod
    def _outputs(result: Any) -> tuple[np.ndarray, np.ndarray]:
        items = result.as_numpy(OUTPUT_TOP_ITEMS)
        scores = result.as_numpy(OUTPUT_TOP_SCORES)
        if items is None or scores is None:
            raise InferenceServerError(
                f"the response has no {OUTPUT_TOP_ITEMS}/{OUTPUT_TOP_SCORES} tensors (or they are empty): the served model "
                "does not follow the fsrec contract, or its python environment has numpy>=2 (see docs/serving.md)"
            )
        return items, scores

    def _inputs_module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as m
        else:
            import tritonclient.http as m
        return m

    def _make_inputs(self, batch: np.ndarray, user_params: np.ndarray | None = None):
        m = self._inputs_module()
        inp = m.InferInput(INPUT_ITEM_IDS, list(batch.shape), TRITON_ITEM_IDS_DTYPE)
        inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=ITEM_IDS_DTYPE))
        inputs = [inp]
        if user_params is not None:  # float32 [B, H] (encode_user_params); absent = zero-shot
            inputs.append(m.InferInput(INPUT_USER_PARAMS, list(user_params.shape), TRITON_SCORE_DTYPE))
            inputs[-1].set_data_from_numpy(np.ascontiguousarray(user_params, dtype=SCORE_DTYPE))
        if self.protocol == "grpc":
            outs = [m.InferRequestedOutput(OUTPUT_TOP_ITEMS), m.InferRequestedOutput(OUTPUT_TOP_SCORES)]
        else:
            outs = [m.InferRequestedOutput(OUTPUT_TOP_ITEMS, binary_data=True),
                    m.InferRequestedOutput(OUTPUT_TOP_SCORES, binary_data=True)]  # fmt: skip
        return inputs, outs

    def _check_indices(self, item_ids: Any, user_params: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``infer_indices``' request, checked before sending: an integer [B, L] array of model
        indices (0 = padding) and, when the model's spec is known, ids in 0..num_items, a width
        the model reads (left-padded to the next length bucket where the server wants buckets) and
        user_params as the model wants them (zeros where it requires them)."""
        a = np.asarray(item_ids)
        if a.ndim != 2 or a.shape[0] < 1 or a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise InvalidRequestError(
                f"item_ids must be an integer array [B, L] of model indices (left-padded with 0, newest last), "
                f"got {a.dtype} {list(a.shape)}: build it with np.zeros((B, L), np.int64), or send raw ids "
                "with recommend_batch()")
        spec = self.spec
        top = spec.num_items if spec is not None else None
        bad = (a < 0) | (a > top) if top is not None else a < 0
        if bad.any():
            shown = sorted({int(x) for x in a[bad]})[:5]
            raise InvalidRequestError(
                f"item_ids holds {int(bad.sum())} id(s) outside 0..{top if top is not None else 'num_items'} "
                f"(e.g. {shown}): send model indices (0 = padding), not raw item ids; map raw ids with the "
                "model's item_map.json, or use recommend_batch()")
        if spec is not None:
            width = a.shape[1]
            if width > spec.max_seq_len or (not spec.variable_length and width != spec.max_seq_len):
                need = f"1..{spec.max_seq_len}" if spec.variable_length else str(spec.max_seq_len)
                raise InvalidRequestError(
                    f"item_ids is {width} wide; the model reads widths {need}: keep the latest items of each "
                    "history and left-pad them with 0")
            if spec.strict_buckets and spec.length_buckets and width not in spec.length_buckets:
                # the server takes bucket widths only (gpu target): left-pad, as recommend_batch does
                a = pad_left(a, spec.request_length(width))
            params = encode_user_params(user_params, a.shape[0], spec)
        elif user_params is None:
            params = None
        else:
            params = np.asarray(user_params, dtype=SCORE_DTYPE)
            if params.ndim != 2 or params.shape[0] != a.shape[0]:
                raise InvalidRequestError(
                    f"user_params has shape {list(params.shape)}; send one float32 row per history: [{a.shape[0]}, H]")
        return a.astype(ITEM_IDS_DTYPE, copy=False), params

    def _channel_args(self) -> list | None:
        """gRPC channel options: round_robin for a resolver target (dns:///, ipv4:, ipv6:)."""
        return grpc_channel_args(self.url) if self.protocol == "grpc" else None

    # -- model-control helpers ----------------------------------------------------------------
    @staticmethod
    def _control_error(err: ClientError) -> ClientError:
        if type(err) is InferenceServerError:
            return ModelControlError(f"{err}")
        return err

    @staticmethod
    def _normalize_index(index: Any) -> list[dict]:
        if isinstance(index, dict):
            index = index.get("models", [])
        return [dict(m) for m in index or []]

    @staticmethod
    def _config_json(config: str | Mapping | None) -> str | None:
        if config is None or isinstance(config, str):
            return config
        import json

        return json.dumps(config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, model={self.model_name!r}, "
            f"version={self.model_version or 'latest'!r}, items={len(self.item_map) if self.item_map else 'indices'})"
        )
