"""RecommenderClient: the thin synchronous client (tritonclient gRPC or HTTP)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ClientError, ConfigError, ServerUnavailableError
from .base import ClientBase
from .errors import is_retryable
from ..contract import EVENTS_MODEL_NAME, USER_MODEL_NAME
from .users import EventRecord, accepted_of, as_events, decode_user_answer, encode_recent, event_inputs, user_inputs
from .validation import (Recommendation, as_history_batch, chunks, model_counts, normalize_statistics,
                         spec_from_model_config, validate_k)


class RecommenderClient(ClientBase):
    """Recommendations from a Triton-served fsrec model: raw item ids in, raw ids and scores out.

    ``RecommenderClient(url, protocol="grpc"|"http", model_name="fsrec", model_version="",
    item_map=IdMap|path|None, repository=<repo dir>, on_unknown="drop"|"error", timeout_s=10,
    retries=2, backoff_s=0.1, backoff_max_s=2, ssl=False, root_certificates=None,
    private_key=None, certificate_chain=None, insecure=False, headers=None, admin_key=None)``

    - ``repository``: read ``<repo>/<model>/<version>/item_map.json`` and ``fsrec_meta.json`` (the
      model's limits); without it the limits come from the server's model config and, without an
      ``item_map``, ids are the model's own indices.
    - Inputs are checked before sending (empty history, unknown ids, length, k) and Triton's errors
      are mapped into :mod:`fsrec_serve.errors`; only unavailable/overloaded calls are retried.
    - Thread safe: gRPC shares one channel; HTTP uses one connection per thread.
    """

    def __init__(self, url: str | None = None, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._grpc = None
        self._local = threading.local()
        self._http_clients: list = []
        self._control_client = None
        self._rng = random.Random()
        self._closed = False

    # -- transport -----------------------------------------------------------------------------
    def _new_client(self, timeout_s: float):
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            return grpcclient.InferenceServerClient(
                self.url, verbose=self.verbose, ssl=self.ssl, root_certificates=self.root_certificates,
                private_key=self.private_key, certificate_chain=self.certificate_chain,
                channel_args=self._channel_args(),
            )  # fmt: skip
        import tritonclient.http as httpclient

        ssl_options = {}
        if self.ssl:
            if self.root_certificates:
                ssl_options["ca_certs"] = self.root_certificates
            if self.certificate_chain:
                ssl_options["certfile"] = self.certificate_chain
            if self.private_key:
                ssl_options["keyfile"] = self.private_key
        return httpclient.InferenceServerClient(
            self.url, verbose=self.verbose, connection_timeout=timeout_s, network_timeout=timeout_s,
            ssl=self.ssl, ssl_options=ssl_options or None, insecure=self.insecure,
        )  # fmt: skip

    def _client(self, control: bool = False):
        if self._closed:
            raise ConfigError("this RecommenderClient is closed; create a new one")
        if self.protocol == "grpc":  # one thread-safe channel; per-call deadlines
            if self._grpc is None:
                with self._lock:
                    if self._grpc is None:
                        self._grpc = self._new_client(self.timeout_s)
            return self._grpc
        if control:  # HTTP timeouts are per connection: model control gets its own, longer one
            with self._lock:
                if self._control_client is None:
                    self._control_client = self._new_client(self.control_timeout_s)
                    self._http_clients.append(self._control_client)
                return self._control_client
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._new_client(self.timeout_s)
            self._local.client = c
            with self._lock:
                self._http_clients.append(c)
        return c

    def _timeout_kw(self, control: bool = False) -> dict:
        return {"client_timeout": self.control_timeout_s if control else self.timeout_s} if self.protocol == "grpc" else {}

    def _call(self, action: str, fn: Callable[[Any], Any], *, control: bool = False, retry: bool = True) -> Any:
        """Run ``fn(tritonclient)``; map errors; retry unavailable/overloaded with backoff."""
        attempt = 0
        while True:
            try:
                return fn(self._client(control))
            except ClientError:
                raise
            except BaseException as exc:  # gevent.Timeout is a BaseException
                err = self._map(exc, action)
                if err is None:
                    raise
                if control:
                    err = self._control_error(err)
                if not (retry and is_retryable(err) and attempt < self.retry.retries):
                    if retry and is_retryable(err) and self.retry.retries:
                        err = type(err)(self.retry.give_up_message(err))
                    raise err from exc
                self._reset_transport()
                time.sleep(self.retry.delay(attempt, self._rng))
                attempt += 1

    def _reset_transport(self) -> None:
        """Drop this thread's HTTP connection after a transport error (it may be half-closed)."""
        if self.protocol == "http":
            c = getattr(self._local, "client", None)
            if c is not None:
                self._local.client = None
                with self._lock:
                    if c in self._http_clients:
                        self._http_clients.remove(c)
                try:
                    c.close()
                except Exception:
                    pass

    # -- model info ---------------------------------------------------------------------------
    def ensure_spec(self):
        """The model's limits: from the repository's fsrec_meta.json, or the server's model config."""
        if self.spec is None:
            cfg = self.model_config()
            with self._lock:
                if self.spec is None:
                    self.spec = spec_from_model_config(cfg)
        return self.spec

    # -- recommendations ---------------------------------------------------------------------
    def recommend(self, history: Sequence[str | int], k: int = 10, user_params: Any = None) -> Recommendation:
        """Top-``k`` items for one history (raw ids, oldest first); ``user_params``: that user's
        per-user parameters (float [H]; None = the zero-shot answer)."""
        return self.recommend_batch([history], k, user_params)[0]

    def recommend_batch(self, histories: Sequence[Sequence[str | int]], k: int = 10,
                        user_params: Any = None) -> list[Recommendation]:
        """Top-``k`` items for many histories in one request (split only beyond the model's
        max_batch_size). Every history is checked before anything is sent."""
        histories = as_history_batch(histories)
        self.ensure_spec()
        k, encoded, batch, params = self._encode(histories, k, user_params)  # params: [B, H] or None
        out: list[Recommendation] = []
        for sl in self._batches(len(encoded)):
            items, scores, version = self._infer(batch[sl], None if params is None else params[sl])
            out.extend(self._decode(items, scores, version, encoded[sl], k))
        return out

    def infer_indices(self, item_ids: np.ndarray, user_params: Any = None) -> tuple[np.ndarray, np.ndarray, str]:
        """Low level: integer [B, L] model indices (left-padded with 0) -> (top_items [B, K],
        top_scores [B, K], model version). No id mapping (load tests, bench, rollout smoke).
        Checked before sending (InvalidRequestError): an integer 2-D array, ids >= 0, and when
        the model's spec is known (``repository=``/``spec=``/after ``ensure_spec()``) ids in
        0..num_items, a width the model reads (left-padded to a length bucket where the server
        wants one) and ``user_params`` [B, H] (zeros sent where the model requires them)."""
        return self._infer(*self._check_indices(item_ids, user_params))

    def _infer(self, batch: np.ndarray, user_params: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        inputs, outputs = self._make_inputs(batch, user_params)
        headers = self._request_headers()

        def run(c):
            r = c.infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs,
                        headers=headers, **self._timeout_kw())  # fmt: skip
            items, scores = self._outputs(r)
            return items, scores, self._version_of(r)

        return self._call(f"inference on {self.model_name!r}", run)

    # -- by user id (store lookup, then the ranker) and events ----------------------------------
    def recommend_for_user(self, user_id: str, k: int = 10, recent_items: Sequence | None = None) -> Recommendation:
        """Top-``k`` for a user by id: the server reads the user's history and per-user parameters
        from its store; ``recent_items`` (raw ids, oldest first) are interactions not recorded yet.
        ``Recommendation.source`` says how it was made (personal / history / popularity)."""
        return self.recommend_for_users([user_id], k, None if recent_items is None else [recent_items])[0]

    def recommend_for_users(self, user_ids: Sequence, k: int = 10,
                            recent_items: Sequence[Sequence] | None = None) -> list[Recommendation]:
        """:meth:`recommend_for_user` for many users (one request per max_batch_size users)."""
        spec = self.ensure_spec()
        k = validate_k(k, spec.max_top_k)
        out: list[Recommendation] = []
        for sl in chunks(len(user_ids), spec.max_batch_size):
            recent = encode_recent(None if recent_items is None else recent_items[sl], len(user_ids[sl]),
                                   self.item_map, spec.num_items)
            inputs, outputs = user_inputs(self._inputs_module(), user_ids[sl], recent)
            rows = self._call(f"inference on {USER_MODEL_NAME!r}", lambda c: decode_user_answer(
                c.infer(USER_MODEL_NAME, inputs, outputs=outputs, headers=self._request_headers(),
                        **self._timeout_kw()), k, self.item_map, spec.num_items))
            out += [Recommendation(i, s, v, (), src) for i, s, src, v in rows]
        return out

    def record(self, user_id: str, item_id: str, timestamp: float | None = None, event_id: str | None = None) -> bool:
        """Record one interaction; True = stored, False = its ``event_id`` was stored before."""
        return self.record_many([EventRecord(user_id, item_id, timestamp, event_id)])[0]

    def record_many(self, events: Sequence) -> list[bool]:
        """Record many interactions (EventRecord s, dicts or tuples) in batched requests; every
        event gets an id before the first attempt, so retries never store one twice."""
        evs = [e if e.event_id else EventRecord(e.user_id, e.item_id, e.timestamp, uuid.uuid4().hex)
               for e in as_events(events)]
        out: list[bool] = []
        for sl in chunks(len(evs), 64):
            inputs, outputs = event_inputs(self._inputs_module(), evs[sl])
            out += self._call(f"inference on {EVENTS_MODEL_NAME!r}", lambda c: accepted_of(
                c.infer(EVENTS_MODEL_NAME, inputs, outputs=outputs, headers=self._request_headers(),
                        **self._timeout_kw())))
        return out

    # -- health ---------------------------------------------------------------------------------
    def is_live(self) -> bool:
        """True if the server answers its liveness endpoint (False if unreachable)."""
        try:
            return bool(self._call("is_server_live", lambda c: c.is_server_live(headers=self._request_headers(), **self._timeout_kw()), retry=False))
        except ServerUnavailableError:
            return False

    def is_ready(self, version: str | int | None = None) -> bool:
        """True if the model (``version`` or the client's) is ready to serve. Model readiness, not
        the server's: with strict readiness the server reports not-ready while an old version is
        unloading during a rollout, although the new one already serves."""
        v = self.model_version if version is None else str(version)
        try:
            return bool(self._call("is_model_ready", lambda c: c.is_model_ready(self.model_name, v, headers=self._request_headers(), **self._timeout_kw()), retry=False))
        except ServerUnavailableError:
            return False

    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> "RecommenderClient":
        """Block until :meth:`is_ready`; ServerUnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"{self.url} ({self.protocol}): model {self.model_name!r} was not ready within {timeout_s:.0f} s; "
                    "is tritonserver running and did the model load (see the server log)?"
                )
            time.sleep(poll_s)
        return self

    # -- metadata and statistics ---------------------------------------------------------------
    def _json_kw(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def server_metadata(self) -> dict:
        return self._call("get_server_metadata", lambda c: c.get_server_metadata(headers=self._request_headers(), **self._json_kw()))

    def model_metadata(self, version: str | int | None = None) -> dict:
        v = self.model_version if version is None else str(version)
        return self._call("get_model_metadata", lambda c: c.get_model_metadata(self.model_name, v, headers=self._request_headers(), **self._json_kw()))

    def model_config(self, version: str | int | None = None) -> dict:
        """Triton's model config as a dict (gRPC's answer unwrapped from its 'config' key)."""
        v = self.model_version if version is None else str(version)
        cfg = self._call("get_model_config", lambda c: c.get_model_config(self.model_name, v, headers=self._request_headers(), **self._json_kw()))
        return cfg.get("config", cfg) if isinstance(cfg, dict) else cfg

    def statistics(self, model_name: str | None = None, version: str | int | None = None) -> dict:
        """Triton's inference statistics (``model_name=""`` = every model), counters as ints on
        both protocols."""
        name = self.model_name if model_name is None else model_name
        v = "" if version is None else str(version)
        stats = self._call("get_inference_statistics", lambda c: c.get_inference_statistics(name, v, headers=self._request_headers(), **self._json_kw()))
        return normalize_statistics(stats)

    def counts(self, version: str | int | None = None) -> dict[str, int]:
        """{'inference_count', 'execution_count', 'success', 'fail'} of the model (all versions, or one)."""
        return model_counts(self.statistics(), self.model_name, "" if version is None else str(version))

    # -- model control (restricted when the server runs with an admin key) ----------------------
    def repository_index(self) -> list[dict]:
        """Models and versions in the server's repository with their state (needs the admin key
        when the server restricts model-repository endpoints)."""
        idx = self._call("get_model_repository_index",
                         lambda c: c.get_model_repository_index(headers=self._request_headers(admin=True), **self._json_kw()),
                         control=True)  # fmt: skip
        return self._normalize_index(idx)

    def load_model(self, name: str | None = None, *, config: str | Mapping | None = None,
                   files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) a model; ``config`` (JSON str or dict) overrides config.pbtxt, e.g.
        ``{"version_policy": {"specific": {"versions": [2]}}}``. Raises ModelControlError with
        Triton's message if loading fails, AuthorizationError without the admin key."""
        n = name or self.model_name
        cfg = self._config_json(config)
        self._call(f"load_model {n!r}",
                   lambda c: c.load_model(n, headers=self._request_headers(admin=True), config=cfg,
                                          files=dict(files) if files else None, **self._timeout_kw(True)),
                   control=True, retry=False)  # fmt: skip

    def unload_model(self, name: str | None = None, *, unload_dependents: bool = False) -> None:
        n = name or self.model_name
        self._call(f"unload_model {n!r}",
                   lambda c: c.unload_model(n, headers=self._request_headers(admin=True),
                                            unload_dependents=unload_dependents, **self._timeout_kw(True)),
                   control=True, retry=False)  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close connections (idempotent)."""
        self._closed = True
        with self._lock:
            clients, self._http_clients = self._http_clients, []
            grpc, self._grpc = self._grpc, None
        for c in clients + ([grpc] if grpc is not None else []):
            try:
                c.close()
            except Exception:
                pass

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
