"""AsyncRecommenderClient: the asyncio twin of RecommenderClient (tritonclient.grpc.aio /
tritonclient.http.aio). Same options, checks, error mapping and retry policy (shared code in
:mod:`.base`, :mod:`.validation` and :mod:`.errors`)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from ..errors import ClientError, ConfigError, RequestTimeoutError, ServerUnavailableError
from .base import ClientBase
from .errors import connection_suspect, is_retryable
from ..contract import EVENTS_MODEL_NAME, USER_MODEL_NAME
from .users import EventRecord, accepted_of, as_events, decode_user_answer, encode_recent, event_inputs, user_inputs
from .validation import (Recommendation, as_history_batch, chunks, model_counts, normalize_statistics,
                         spec_from_model_config, validate_k)


class AsyncRecommenderClient(ClientBase):
    """``async with AsyncRecommenderClient(url, protocol=...) as c: rec = await c.recommend(h, k)``.

    Takes the same arguments as :class:`~fsrec_serve.client.RecommenderClient`. Create and use it
    inside one event loop (the underlying channel/session binds to the loop that first uses it).
    """

    def __init__(self, url: str | None = None, protocol: str | None = None, **kwargs: Any):
        super().__init__(url, protocol, **kwargs)
        self._aclient = None
        self._rng = random.Random()
        self._closed = False

    # -- transport -----------------------------------------------------------------------------
    def _new_client(self):
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcaio

            return grpcaio.InferenceServerClient(
                self.url, verbose=self.verbose, ssl=self.ssl, root_certificates=self.root_certificates,
                private_key=self.private_key, certificate_chain=self.certificate_chain,
                channel_args=self._channel_args(),
            )  # fmt: skip
        import tritonclient.http.aio as httpaio

        ssl_context = None
        if self.ssl:
            import ssl as _ssl

            ssl_context = _ssl.create_default_context(cafile=self.root_certificates)
            if self.certificate_chain:
                ssl_context.load_cert_chain(self.certificate_chain, self.private_key)
            if self.insecure:
                ssl_context.check_hostname = False
                ssl_context.verify_mode = _ssl.CERT_NONE
        return httpaio.InferenceServerClient(
            self.url, verbose=self.verbose, conn_timeout=max(self.timeout_s, self.control_timeout_s),
            ssl=self.ssl, ssl_context=ssl_context,
        )  # fmt: skip

    def _client(self):
        if self._closed:
            raise ConfigError("this AsyncRecommenderClient is closed; create a new one")
        if self._aclient is None:
            self._aclient = self._new_client()
        return self._aclient

    def _timeout_kw(self, control: bool = False) -> dict:
        return {"client_timeout": self.control_timeout_s if control else self.timeout_s} if self.protocol == "grpc" else {}

    async def _call(self, action: str, fn: Callable[[Any], Awaitable[Any]], *, control: bool = False,
                    retry: bool = True) -> Any:  # fmt: skip
        """Await ``fn(client)`` under the client's timeout; map errors; retry unavailable with backoff."""
        attempt = 0
        timeout = self.control_timeout_s if control else self.timeout_s
        while True:
            client = None
            try:
                try:
                    client = self._client()
                    return await asyncio.wait_for(fn(client), timeout)
                except asyncio.TimeoutError as e:  # the HTTP session has no per-call deadline
                    raise RequestTimeoutError(
                        f"{action} on {self.url} ({self.protocol}): no answer within {timeout:g} s; raise timeout_s, "
                        "or check the server's load"
                    ) from e
            except ClientError as err0:
                err = err0
                exc: BaseException = err0
            except Exception as exc0:
                exc = exc0
                mapped = self._map(exc0, action)
                if mapped is None:
                    raise
                err = mapped
            if control:
                err = self._control_error(err)
            if not (retry and is_retryable(err) and attempt < self.retry.retries):
                if retry and is_retryable(err) and self.retry.retries:
                    err = type(err)(self.retry.give_up_message(err))
                if err is exc:
                    raise err
                raise err from exc
            if connection_suspect(exc):
                await self._reset_transport(client)
            await asyncio.sleep(self.retry.delay(attempt, self._rng))
            attempt += 1

    async def _reset_transport(self, failed: Any) -> None:
        """Close and drop the channel/session a retryable transport error came through (it may be
        half-closed, or hold a broken subchannel): the retry opens a new one. Only when it is still
        the current one, so that calls failing together replace it once."""
        if failed is None or failed is not self._aclient:
            return
        self._aclient = None
        try:
            await failed.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
            pass

    # -- model info ---------------------------------------------------------------------------
    async def ensure_spec(self):
        """The model's limits: from the repository's fsrec_meta.json, or the server's model config."""
        if self.spec is None:
            self.spec = spec_from_model_config(await self.model_config())
        return self.spec

    # -- recommendations ---------------------------------------------------------------------
    async def recommend(self, history: Sequence[str | int], k: int = 10, user_params: Any = None) -> Recommendation:
        """Top-``k`` items for one history (raw ids, oldest first); ``user_params``: that user's
        per-user parameters (float [H]; None = the zero-shot answer)."""
        return (await self.recommend_batch([history], k, user_params))[0]

    async def recommend_batch(self, histories: Sequence[Sequence[str | int]], k: int = 10,
                        user_params: Any = None) -> list[Recommendation]:
        """Top-``k`` items for many histories in one request (split beyond max_batch_size)."""
        histories = as_history_batch(histories)
        await self.ensure_spec()
        k, encoded, batch, params = self._encode(histories, k, user_params)  # params: [B, H] or None
        out: list[Recommendation] = []
        for sl in self._batches(len(encoded)):
            items, scores, version = await self._infer(batch[sl], None if params is None else params[sl])
            out.extend(self._decode(items, scores, version, encoded[sl], k))
        return out

    async def infer_indices(self, item_ids: np.ndarray, user_params: Any = None) -> tuple[np.ndarray, np.ndarray, str]:
        """Low level: integer [B, L] indices -> (top_items, top_scores, model version); checked as
        :meth:`RecommenderClient.infer_indices <fsrec_serve.client.RecommenderClient.infer_indices>`."""
        return await self._infer(*self._check_indices(item_ids, user_params))

    async def _infer(self, batch: np.ndarray, user_params: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        inputs, outputs = self._make_inputs(batch, user_params)
        headers = self._request_headers()

        async def run(c):
            r = await c.infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs,
                              headers=headers, **self._timeout_kw())  # fmt: skip
            items, scores = self._outputs(r)
            return items, scores, self._version_of(r)

        return await self._call(f"inference on {self.model_name!r}", run)

    # -- by user id and events (see RecommenderClient) ------------------------------------------
    async def recommend_for_user(self, user_id: str, k: int = 10, recent_items: Sequence | None = None) -> Recommendation:
        return (await self.recommend_for_users([user_id], k, None if recent_items is None else [recent_items]))[0]

    async def recommend_for_users(self, user_ids: Sequence, k: int = 10,
                                  recent_items: Sequence[Sequence] | None = None) -> list[Recommendation]:
        spec = await self.ensure_spec()
        k = validate_k(k, spec.max_top_k)
        out: list[Recommendation] = []
        for sl in chunks(len(user_ids), spec.max_batch_size):
            recent = encode_recent(None if recent_items is None else recent_items[sl], len(user_ids[sl]),
                                   self.item_map, spec.num_items)
            inputs, outputs = user_inputs(self._inputs_module(), user_ids[sl], recent)

            async def run(c, inputs=inputs, outputs=outputs):
                r = await c.infer(USER_MODEL_NAME, inputs, outputs=outputs, headers=self._request_headers(),
                                  **self._timeout_kw())
                return decode_user_answer(r, k, self.item_map, spec.num_items)

            rows = await self._call(f"inference on {USER_MODEL_NAME!r}", run)
            out += [Recommendation(i, s, v, (), src) for i, s, src, v in rows]
        return out

    async def record(self, user_id: str, item_id: str, timestamp: float | None = None,
                     event_id: str | None = None) -> bool:
        return (await self.record_many([EventRecord(user_id, item_id, timestamp, event_id)]))[0]

    async def record_many(self, events: Sequence) -> list[bool]:
        evs = [e if e.event_id else EventRecord(e.user_id, e.item_id, e.timestamp, uuid.uuid4().hex)
               for e in as_events(events)]
        out: list[bool] = []
        for sl in chunks(len(evs), 64):
            inputs, outputs = event_inputs(self._inputs_module(), evs[sl])

            async def run(c, inputs=inputs, outputs=outputs):
                return accepted_of(await c.infer(EVENTS_MODEL_NAME, inputs, outputs=outputs,
                                                 headers=self._request_headers(), **self._timeout_kw()))

            out += await self._call(f"inference on {EVENTS_MODEL_NAME!r}", run)
        return out

    # -- health ---------------------------------------------------------------------------------
    async def is_live(self) -> bool:
        try:
            return bool(await self._call("is_server_live", lambda c: c.is_server_live(headers=self._request_headers(), **self._timeout_kw()), retry=False))
        except ServerUnavailableError:
            return False

    async def is_ready(self, version: str | int | None = None) -> bool:
        """True if the model (``version`` or the client's) is ready to serve (see the sync client)."""
        v = self.model_version if version is None else str(version)
        try:
            return bool(await self._call("is_model_ready", lambda c: c.is_model_ready(self.model_name, v, headers=self._request_headers(), **self._timeout_kw()), retry=False))
        except ServerUnavailableError:
            return False

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> "AsyncRecommenderClient":
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.is_ready():
            if loop.time() > deadline:
                raise ServerUnavailableError(
                    f"{self.url} ({self.protocol}): model {self.model_name!r} was not ready within {timeout_s:.0f} s; "
                    "is tritonserver running and did the model load (see the server log)?"
                )
            await asyncio.sleep(poll_s)
        return self

    # -- metadata and statistics ---------------------------------------------------------------
    def _json_kw(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    async def server_metadata(self) -> dict:
        return await self._call("get_server_metadata", lambda c: c.get_server_metadata(headers=self._request_headers(), **self._json_kw()))

    async def model_metadata(self, version: str | int | None = None) -> dict:
        v = self.model_version if version is None else str(version)
        return await self._call("get_model_metadata", lambda c: c.get_model_metadata(self.model_name, v, headers=self._request_headers(), **self._json_kw()))

    async def model_config(self, version: str | int | None = None) -> dict:
        v = self.model_version if version is None else str(version)
        cfg = await self._call("get_model_config", lambda c: c.get_model_config(self.model_name, v, headers=self._request_headers(), **self._json_kw()))
        return cfg.get("config", cfg) if isinstance(cfg, dict) else cfg

    async def statistics(self, model_name: str | None = None, version: str | int | None = None) -> dict:
        name = self.model_name if model_name is None else model_name
        v = "" if version is None else str(version)
        return normalize_statistics(
            await self._call("get_inference_statistics", lambda c: c.get_inference_statistics(name, v, headers=self._request_headers(), **self._json_kw()))
        )

    async def counts(self, version: str | int | None = None) -> dict[str, int]:
        return model_counts(await self.statistics(), self.model_name, "" if version is None else str(version))

    # -- model control -------------------------------------------------------------------------
    async def repository_index(self) -> list[dict]:
        idx = await self._call("get_model_repository_index",
                               lambda c: c.get_model_repository_index(headers=self._request_headers(admin=True), **self._json_kw()),
                               control=True)  # fmt: skip
        return self._normalize_index(idx)

    async def load_model(self, name: str | None = None, *, config: str | Mapping | None = None,
                         files: Mapping[str, bytes] | None = None) -> None:  # fmt: skip
        n = name or self.model_name
        cfg = self._config_json(config)
        await self._call(f"load_model {n!r}",
                         lambda c: c.load_model(n, headers=self._request_headers(admin=True), config=cfg,
                                                files=dict(files) if files else None, **self._timeout_kw(True)),
                         control=True, retry=False)  # fmt: skip

    async def unload_model(self, name: str | None = None, *, unload_dependents: bool = False) -> None:
        n = name or self.model_name
        await self._call(f"unload_model {n!r}",
                         lambda c: c.unload_model(n, headers=self._request_headers(admin=True),
                                                  unload_dependents=unload_dependents, **self._timeout_kw(True)),
                         control=True, retry=False)  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        self._closed = True
        c, self._aclient = self._aclient, None
        if c is not None:
            try:
                await c.close()
            except Exception:
                pass

    async def __aenter__(self) -> "AsyncRecommenderClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
