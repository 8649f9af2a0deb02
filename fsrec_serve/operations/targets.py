"""What each served target needs from a rollout, read from the live config (Triton JSON form):

- :func:`target_of`: the ``exporters`` target of a served model (backend onnxruntime = ``gpu``;
  python with parameter runtime ``torch`` = ``gpu-python``, which needs ``model.pt``; python with
  runtime ``onnxruntime`` = ``cpu``), so the new version is built for the same target;
- :func:`smoke_requests`: the requests a client of that target sends (the client's own encoding,
  :mod:`fsrec_serve.client.validation`): zeros ``user_params`` where the input is required (gpu)
  and histories left-padded to a length bucket where the server takes buckets only
  (``strict_buckets``, gpu); :func:`ask` sends them and puts the answers back in order;
- :func:`smoke_tolerance`: how close the served scores must be to ONNX Runtime's.

No I/O here: the answering function is given (a client's ``infer_indices``, ONNX Runtime).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..client.validation import ModelSpec, chunks, encode_history, encode_user_params, pad_batch, spec_from_model_config
from ..errors import RolloutError
from .answers import FILLER_ITEM

RUNTIME_TARGETS = {"onnxruntime": "cpu", "torch": "gpu-python"}  # python backend: parameter runtime -> target


def _param(config: Mapping[str, Any], key: str, default: str = "") -> str:
    """A config parameter's string value ({"key": {"string_value": "..."}} in Triton's JSON)."""
    v = (config.get("parameters") or {}).get(key)
    v = v.get("string_value", "") if isinstance(v, Mapping) else v
    return str(v) if v not in (None, "") else default


def target_of(config: Mapping[str, Any]) -> str:
    """The exporters target (``exporters.triton_config.TARGETS``) of a served model's config."""
    config = config.get("config", config)
    backend = str(config.get("backend", "") or config.get("platform", ""))
    if backend.startswith("onnxruntime"):
        return "gpu"
    if backend == "python":
        runtime = _param(config, "runtime", "onnxruntime")  # the python model's default runtime
        if runtime in RUNTIME_TARGETS:
            return RUNTIME_TARGETS[runtime]
        raise RolloutError(
            f"the served python model has parameter runtime={runtime!r}; fsrec rollout knows 'onnxruntime' "
            "(target cpu) and 'torch' (target gpu-python): serve a repository built by `fsrec repository --target`")
    raise RolloutError(
        f"the served model uses backend {backend!r}; fsrec rollout knows 'onnxruntime' (target gpu) and 'python' "
        "(targets cpu, gpu-python): serve a repository built by `fsrec repository`")


def smoke_tolerance(precision: str, target: str, configured: float | None = None) -> float:
    """|served - ONNX Runtime| score tolerance: ``configured``, else 1e-4 for an fp32 graph run in
    fp32, 5e-2 for fp16 / int8 graphs and for the gpu target (TensorRT runs the graph at its
    precision_mode, FP16)."""
    if configured is not None:
        return float(configured)
    return 1e-4 if precision == "fp32" and target != "gpu" else 5e-2


@dataclass(frozen=True)
class SmokeRequest:
    """One smoke request as the client sends it to the served model."""

    rows: np.ndarray  # positions of its histories in the smoke set
    item_ids: np.ndarray  # int64 [b, L]: L = the client's width (a length bucket where the server wants one)
    user_params: np.ndarray | None  # float32 zeros [b, H] where the model requires the input, else None


def served_spec(config: Mapping[str, Any], num_items: int) -> ModelSpec:
    """The client's :class:`ModelSpec` of a served config (Triton JSON form: length buckets,
    strict buckets, a required user_params input), with the export's ``num_items``."""
    return dataclasses.replace(spec_from_model_config(config), num_items=int(num_items))


def smoke_requests(spec: ModelSpec, histories: np.ndarray) -> list[SmokeRequest]:
    """The requests for ``histories`` (int64 [n, W] left-padded, :func:`smoke_histories`) that a
    client of ``spec`` sends: encode_history / pad_batch / encode_user_params, so each target
    gets what it requires (zeros user_params where the input is required, the gpu target). On a
    strict-bucket model, one request per length bucket (each padded to its bucket, every
    bucket's engine answers); otherwise one request padded to its longest history. At most
    max_batch_size rows each."""
    encoded = [encode_history([int(i) for i in h if i > 0], item_map=None, max_seq_len=spec.max_seq_len,
                              num_items=spec.num_items, on_unknown="error") for h in histories]
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(spec.request_length(len(e.indices)) if spec.strict_buckets else 0, []).append(i)
    out = []
    for key in sorted(groups):
        for sl in chunks(len(groups[key]), spec.max_batch_size):
            rows = np.asarray(groups[key][sl], dtype=np.int64)
            part = [encoded[i] for i in rows]
            out.append(SmokeRequest(rows, pad_batch(part, spec), encode_user_params(None, len(part), spec)))
    return out


def ask(requests: Sequence[SmokeRequest], n: int,
        answer: Callable[..., tuple]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``answer(item_ids, user_params) -> (items [b, K], scores [b, K], version)`` for every
    request -> (items [n, K], scores [n, K]) in the smoke set's order and the versions that answered."""
    items: np.ndarray | None = None
    scores: np.ndarray | None = None
    versions: list[str] = []
    for r in requests:
        it, sc, version = answer(r.item_ids, r.user_params)
        if items is None or scores is None:
            items = np.full((n, it.shape[1]), FILLER_ITEM, dtype=np.int64)
            scores = np.zeros((n, it.shape[1]), dtype=np.float32)
        items[r.rows], scores[r.rows] = it, sc
        versions.append(str(version))
    if items is None or scores is None:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), []
    return items, scores, versions
