"""Pure request checks and response decoding shared by the sync and asyncio clients.

No network and no tritonclient here: every check runs before a request is sent and can be
unit-tested (and property-tested) on its own. Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..contract import (
    CONFIG_FILE,
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ITEM_MAP_FILE,
    META_FILE,
    OUTPUT_TOP_ITEMS,
    SCORE_DTYPE,
)
from ..errors import ConfigError, InvalidRequestError
from ..idmap import IdMap, pad_left

log = logging.getLogger("fsrec_serve.client")

ON_UNKNOWN = ("drop", "error")


@dataclass(frozen=True)
class Recommendation:
    """Top-k recommendations for one history."""

    items: list[str]  # raw item ids, best first (never padding, never the user's own history)
    scores: list[float]  # the model's score of each item, same order
    model_version: str = ""  # version of the Triton model that answered
    dropped: tuple = ()  # raw ids of the history that the id map did not know (on_unknown="drop")
    source: str = ""  # by user id: "personal" | "history" | "popularity" (contract.SOURCES); "" = by items


@dataclass(frozen=True)
class ModelSpec:
    """What the client must know about the served model to build a valid request."""

    max_seq_len: int  # width of the item_ids input (longer histories keep their latest items)
    max_top_k: int  # width of top_items / top_scores: k must be in 1..max_top_k
    num_items: int | None = None  # valid indices are 1..num_items (None = unknown, server checks)
    max_batch_size: int = 64  # the model's max_batch_size; bigger batches are split
    extra: dict = field(default_factory=dict)  # anything else read from fsrec_meta.json
    # the model reads histories of any length 1..max_seq_len (config dims [-1]); False = an older
    # fixed-width model: every request is padded to max_seq_len
    variable_length: bool = False
    length_buckets: tuple = ()  # served length buckets (max_seq_len last); () = none declared
    strict_buckets: bool = False  # the server accepts bucket lengths only (gpu target): pad up to one
    user_params_dim: int = 0  # H of the user_params input (0 = the model has none)
    user_params_required: bool = False  # gpu target: the input is not optional (zeros are sent)

    def __post_init__(self):
        if self.max_seq_len < 1 or self.max_top_k < 1 or self.max_batch_size < 1:
            raise ConfigError(f"invalid model spec {self}: max_seq_len, max_top_k and max_batch_size must be >= 1")

    def request_length(self, longest: int) -> int:
        """Width L of the item_ids tensor for a request whose longest history has ``longest``
        items: the model's fixed width, the next strict bucket, or the history's own length."""
        if not self.variable_length:
            return self.max_seq_len
        n = max(1, min(int(longest), self.max_seq_len))
        if self.strict_buckets and self.length_buckets:
            return next((int(b) for b in self.length_buckets if b >= n), self.max_seq_len)
        return n


@dataclass(frozen=True)
class EncodedHistory:
    """A checked history, as the model reads it."""

    indices: list[int]  # item indices, oldest first, at most max_seq_len of them (latest kept)
    dropped: tuple = ()  # unknown raw ids removed (on_unknown="drop")
    truncated: int = 0  # how many of the oldest items were cut to fit max_seq_len


# -- checks -------------------------------------------------------------------------------
def validate_k(k: Any, max_top_k: int) -> int:
    """``k`` must be an integer in 1..max_top_k."""
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise InvalidRequestError(f"k must be an integer in 1..{max_top_k}, got {k!r} ({type(k).__name__})")
    k = int(k)
    if not 1 <= k <= max_top_k:
        raise InvalidRequestError(
            f"k={k} is out of range 1..{max_top_k}: the model returns at most {max_top_k} items "
            "(re-export with a larger max_top_k to ask for more)"
        )
    return k


def validate_on_unknown(on_unknown: str) -> str:
    if on_unknown not in ON_UNKNOWN:
        raise ConfigError(f"on_unknown={on_unknown!r}: choose 'drop' (drop with a warning) or 'error'")
    return on_unknown


def _as_item_list(history: Any) -> list:
    if history is None or isinstance(history, (str, bytes, bytearray, Mapping)):
        raise InvalidRequestError(
            f"history must be a list of item ids (oldest first), got {type(history).__name__}"
            + (f" {history!r}" if isinstance(history, (str, bytes)) and len(history) < 40 else "")
        )
    if isinstance(history, np.ndarray):
        if history.ndim != 1:
            raise InvalidRequestError(f"history must be 1-D, got an array of shape {history.shape}")
        return history.tolist()
    try:
        return list(history)
    except TypeError:
        raise InvalidRequestError(f"history must be a list of item ids, got {type(history).__name__}") from None


def as_history_batch(histories: Any) -> list:
    """A list of histories (each a list of ids); refuses a single string, a mapping or None."""
    if histories is None or isinstance(histories, (str, bytes, bytearray, Mapping)):
        raise InvalidRequestError(
            f"histories must be a list of histories (lists of item ids), got {type(histories).__name__}"
        )
    try:
        return list(histories)
    except TypeError:
        raise InvalidRequestError(f"histories must be a list of histories, got {type(histories).__name__}") from None


def encode_history(
    history: Sequence[str | int],
    *,
    item_map: IdMap | None,
    max_seq_len: int,
    num_items: int | None = None,
    on_unknown: str = "drop",
) -> EncodedHistory:
    """Raw ids (oldest first) -> model indices, checked.

    - empty history -> InvalidRequestError;
    - ids must be str or int (``item_map=None``: ints are model indices in 1..num_items);
    - unknown ids: dropped with a warning (``on_unknown="drop"``) or refused (``"error"``); a
      history left empty by dropping is refused;
    - longer than ``max_seq_len``: the latest ``max_seq_len`` items are kept.
    """
    items = _as_item_list(history)
    if not items:
        raise InvalidRequestError("history is empty: send at least one item id the user interacted with")
    indices: list[int] = []
    unknown: list = []
    for raw in items:
        if isinstance(raw, bool) or not isinstance(raw, (str, Integral)):
            raise InvalidRequestError(
                f"item id {raw!r} ({type(raw).__name__}) is neither a string nor an integer; send raw item ids"
            )
        if item_map is not None:
            idx = item_map._to_index.get(str(raw))  # noqa: SLF001 - hot path, IdMap.index raises
            if idx is None:
                unknown.append(raw)
                continue
        else:  # index mode: ids are the model's own indices
            try:
                idx = int(raw)
            except ValueError:
                unknown.append(raw)
                continue
            if idx < 1 or (num_items is not None and idx > num_items):
                unknown.append(raw)
                continue
        indices.append(int(idx))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        where = (
            f"the model's id map ({len(item_map)} items)" if item_map is not None
            else f"the index range 1..{num_items if num_items is not None else 'N'} (no id map loaded)"
        )  # fmt: skip
        if on_unknown == "error":
            err = InvalidRequestError(
                f"{len(unknown)} item id(s) not in {where}: {shown}; remove them, or pass "
                "on_unknown='drop' to drop them with a warning"
            )
            err.unknown_ids = list(unknown)  # type: ignore[attr-defined]
            raise err
        if not indices:
            raise InvalidRequestError(
                f"none of the history's {len(items)} item id(s) is in {where} ({shown}): nothing to recommend from"
            )
        log.warning("dropped %d unknown item id(s) from the history: %s", len(unknown), shown)
    truncated = max(0, len(indices) - max_seq_len)
    if truncated:
        indices = indices[-max_seq_len:]
    return EncodedHistory(indices, tuple(unknown), truncated)


def pad_batch(encoded: Sequence[EncodedHistory], max_seq_len: int | ModelSpec) -> np.ndarray:
    """Encoded histories -> int64 [B, L], left-padded with 0 (newest last).

    ``max_seq_len`` an int: L = that width. A :class:`ModelSpec`: L = ``spec.request_length`` of
    the longest history (its own length on a variable-length model, the next bucket where the
    server wants buckets, max_seq_len on a fixed-width model)."""
    if isinstance(max_seq_len, ModelSpec):
        width = max_seq_len.request_length(max((len(e.indices) for e in encoded), default=1))
    else:
        width = int(max_seq_len)
    return pad_left([e.indices for e in encoded], width)


def encode_user_params(user_params: Any, n_rows: int, spec: ModelSpec) -> np.ndarray | None:
    """Per-user parameters for ``n_rows`` histories -> float32 [n_rows, H], checked, or None.

    ``None``: nothing is sent (zeros on the server = the zero-shot answer), except where the
    model requires the input (zeros are sent). Refuses (InvalidRequestError) a model without
    per-user parameters, a shape other than [n_rows, H] (or [H] for one history), a non-float
    dtype, and NaN or infinite values."""
    h = spec.user_params_dim
    if user_params is None:
        return np.zeros((n_rows, h), SCORE_DTYPE) if spec.user_params_required and h else None
    if not h:
        raise InvalidRequestError(
            "user_params were given, but the served model has no per-user parameter input: "
            "re-export it with `fsrec export` (graphs from before user_params) or drop user_params")
    try:
        arr = np.asarray(user_params)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise InvalidRequestError(f"user_params must be a float array of shape [{n_rows}, {h}]: {e}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InvalidRequestError(f"user_params must be float32 numbers, got dtype {arr.dtype}")
    if arr.ndim == 1 and n_rows == 1:
        arr = arr[None, :]
    if arr.shape != (n_rows, h):
        raise InvalidRequestError(
            f"user_params has shape {list(arr.shape)}; the model needs [{n_rows}, {h}] (one row of the "
            f"model's hidden size {h} per history)")
    arr = arr.astype(SCORE_DTYPE)
    if not np.isfinite(arr).all():
        raise InvalidRequestError("user_params holds NaN or infinite values: refit that user's parameters "
                                  "(or send none for the zero-shot answer)")
    return arr


def decode_top(
    top_items: np.ndarray,
    top_scores: np.ndarray,
    k: int,
    *,
    item_map: IdMap | None,
    num_items: int | None = None,
) -> list[tuple[list[str], list[float]]]:
    """Served outputs ([B, K] indices, [B, K] scores) -> per row (raw ids, scores) of the first
    ``k`` valid items (indices outside 1..num_items, which a well-formed model never returns,
    are skipped)."""
    top_items = np.asarray(top_items)
    top_scores = np.asarray(top_scores)
    if top_items.ndim != 2 or top_items.shape != top_scores.shape:
        raise InvalidRequestError(
            f"the server returned top_items {top_items.shape} / top_scores {top_scores.shape}; expected two "
            "[B, max_top_k] arrays: is the served model an fsrec export?"
        )
    n = len(item_map) if item_map is not None else num_items
    out = []
    for row_i, row_s in zip(top_items.tolist(), top_scores.tolist()):
        items, scores = [], []
        for idx, sc in zip(row_i, row_s):
            if idx < 1 or (n is not None and idx > n):
                continue
            items.append(item_map._to_raw[idx] if item_map is not None else str(idx))  # noqa: SLF001
            scores.append(float(sc))
            if len(items) == k:
                break
        out.append((items, scores))
    return out


def chunks(n: int, size: int) -> list[slice]:
    """Slices that cover range(n) in pieces of at most ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]


# -- repository side files -------------------------------------------------------------
def resolve_version_dir(repository: str | Path, model_name: str, model_version: str = "") -> Path:
    """``<repo>/<model>/<version>``; version "" = the highest numeric version folder."""
    model_dir = Path(repository).expanduser() / model_name
    if not model_dir.is_dir():
        raise ConfigError(
            f"{model_dir} does not exist: pass the model repository that the server serves "
            "(built by `fsrec export`), or item_map= explicitly"
        )
    if model_version:
        d = model_dir / str(model_version)
        if not d.is_dir():
            have = sorted(p.name for p in model_dir.iterdir() if p.name.isdigit())
            raise ConfigError(f"version {model_version} is not in {model_dir} (it has: {', '.join(have) or 'none'})")
        return d
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()))
    if not versions:
        raise ConfigError(f"{model_dir} holds no version folder (1/, 2/, ...): rebuild the repository")
    return model_dir / str(versions[-1])


_MAX_BATCH = re.compile(r"^\s*max_batch_size\s*:\s*(\d+)", re.MULTILINE)
_PARAM = re.compile(r'key:\s*"(\w+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"')
_DIMS_MINUS_ONE = re.compile(rf'name:\s*"{INPUT_ITEM_IDS}"[^}}]*?dims:\s*-1')
_USER_PARAMS_OPTIONAL = re.compile(rf'name:\s*"{INPUT_USER_PARAMS}"[^}}]*?optional:\s*true')


def _length_fields(params: Mapping[str, str], variable: bool) -> dict:
    """ModelSpec fields about history lengths from config parameters (strings)."""
    buckets = tuple(sorted({int(b) for b in params.get("length_buckets", "").split(",") if b.strip()}))
    return {"variable_length": variable, "length_buckets": buckets if variable else (),
            "strict_buckets": variable and params.get("strict_buckets", "false").lower() == "true"}


def load_repository_info(
    repository: str | Path, model_name: str, model_version: str = ""
) -> tuple[IdMap | None, ModelSpec, str]:
    """Read the id map and fsrec_meta.json of the served version from a repository folder.
    Returns (item_map or None, spec, version folder name)."""
    vdir = resolve_version_dir(repository, model_name, model_version)
    meta_path = vdir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{meta_path} is missing: rebuild the repository with `fsrec export`") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{meta_path} is not valid JSON ({e}): rebuild the repository") from None
    max_batch = 64
    cfg = vdir.parent / CONFIG_FILE
    text = cfg.read_text() if cfg.is_file() else ""
    m = _MAX_BATCH.search(text)
    if m and int(m.group(1)) > 0:
        max_batch = int(m.group(1))
    lengths = _length_fields(dict(_PARAM.findall(text)), bool(_DIMS_MINUS_ONE.search(text)))
    h = int(meta.get("user_params_dim", 0) or 0)
    try:
        spec = ModelSpec(
            **lengths, user_params_dim=h,
            user_params_required=bool(h) and INPUT_USER_PARAMS in text and not _USER_PARAMS_OPTIONAL.search(text),
            max_seq_len=int(meta["max_seq_len"]),
            max_top_k=int(meta["max_top_k"]),
            num_items=int(meta["num_items"]) if meta.get("num_items") is not None else None,
            max_batch_size=max_batch,
            extra={k: v for k, v in meta.items() if k not in ("max_seq_len", "max_top_k", "num_items")},
        )
    except KeyError as e:
        raise ConfigError(f"{meta_path} has no {e.args[0]!r}: rebuild the repository with `fsrec export`") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{meta_path} has an invalid value ({e}): rebuild the repository with `fsrec export`") from None
    map_path = vdir / ITEM_MAP_FILE
    item_map = IdMap.load(map_path) if map_path.is_file() else None
    return item_map, spec, vdir.name


def spec_from_model_config(config: Mapping[str, Any]) -> ModelSpec:
    """ModelSpec from Triton's model config (HTTP JSON, or gRPC as_json with a 'config' key)."""
    cfg = config.get("config", config)

    def dims(entries, name):
        for e in entries or []:
            if e.get("name") == name:
                return [int(d) for d in e.get("dims", [])]
        raise ConfigError(
            f"the served model has no {name!r} tensor: it is not an fsrec export (inputs/outputs: "
            f"{[e.get('name') for e in entries or []]})"
        )

    params = {k: (v.get("string_value", "") if isinstance(v, Mapping) else str(v))
              for k, v in (cfg.get("parameters") or {}).items()}
    (seq,) = dims(cfg.get("input"), INPUT_ITEM_IDS)[-1:]
    (top,) = dims(cfg.get("output"), OUTPUT_TOP_ITEMS)[-1:]
    variable = seq == -1
    if variable:
        try:
            seq = int(params["max_seq_len"])
        except (KeyError, ValueError):
            raise ConfigError("the served model reads histories of any length but its config has no "
                              "'max_seq_len' parameter: rebuild the repository with `fsrec repository`") from None
    up = [e for e in cfg.get("input") or [] if e.get("name") == INPUT_USER_PARAMS]
    h = int(up[0].get("dims", [0])[-1]) if up else 0
    return ModelSpec(max_seq_len=seq, max_top_k=top, num_items=None,
                     max_batch_size=int(cfg.get("max_batch_size", 0)) or 1,
                     **_length_fields(params, variable), user_params_dim=h,
                     user_params_required=bool(up) and not up[0].get("optional", False))


def coerce_item_map(item_map: IdMap | str | Path | None) -> IdMap | None:
    if item_map is None or isinstance(item_map, IdMap):
        return item_map
    p = Path(item_map).expanduser()
    return IdMap.load(p / ITEM_MAP_FILE if p.is_dir() else p)


# -- statistics ---------------------------------------------------------------------------
_INT_KEYS = re.compile(r"(count|ns|batch_size|last_inference|memory_usage|byte_size)$")


def normalize_statistics(stats: Any) -> Any:
    """gRPC's JSON renders int64 as strings and drops zeros; make counters ints like HTTP's."""
    if isinstance(stats, dict):
        out = {}
        for k, v in stats.items():
            v = normalize_statistics(v)
            if isinstance(v, str) and v.lstrip("-").isdigit() and _INT_KEYS.search(k):
                v = int(v)
            out[k] = v
        if {"success", "fail", "queue"} <= out.keys():
            for sub in out.values():
                if isinstance(sub, dict) and not sub:
                    sub.update(count=0, ns=0)
        return out
    if isinstance(stats, list):
        return [normalize_statistics(v) for v in stats]
    return stats


def model_counts(stats: Mapping[str, Any], model_name: str, version: str = "") -> dict[str, int]:
    """{'inference_count', 'execution_count', 'success', 'fail'} summed over the model's versions
    (or one version) in a normalized statistics() answer."""
    out = {"inference_count": 0, "execution_count": 0, "success": 0, "fail": 0}
    for m in stats.get("model_stats", []):
        if m.get("name") != model_name or (version and str(m.get("version")) != str(version)):
            continue
        out["inference_count"] += int(m.get("inference_count", 0) or 0)
        out["execution_count"] += int(m.get("execution_count", 0) or 0)
        inf = m.get("inference_stats", {})
        out["success"] += int(inf.get("success", {}).get("count", 0) or 0)
        out["fail"] += int(inf.get("fail", {}).get("count", 0) or 0)
    return out
